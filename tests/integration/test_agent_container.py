"""The agent container against real Docker, SeaweedFS and Litestream: kills, graceful stops, fencing.

The monotonic counter is the sequence of workflow ids the agent acknowledged (HTTP 201 after the row committed):
whatever was acknowledged must be in the replica after a graceful stop."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from agent_image import contract, load_bundle
from agent_image.__main__ import _parser, open_runtime
from agent_image._store import Store
from agent_image.container import litestream
from control_plane.drivers.agent_http import bearer
from tests.integration.conftest import Agents, eventually


class Writer(threading.Thread):
    """Starts `count` workflows `{prefix}-0, -1, ...` one after another and remembers which were acknowledged."""

    def __init__(self, url: str, prefix: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.prefix, self.token = url, prefix, token
        self.acknowledged: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5, headers=bearer(self.token)) as client:
            while not self.stop.is_set():
                workflow_id = f"{self.prefix}-{len(self.acknowledged)}"
                try:
                    answer = client.post(f"{self.url}/v1/workflows/count", json={"id": workflow_id, "args": [1]})
                except httpx.HTTPError:
                    return
                if answer.status_code not in (200, 201):
                    return
                self.acknowledged.append(workflow_id)


def workflow_ids(db: Path) -> set[str]:
    connection = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM workflow_state")}
    finally:
        connection.close()


def logs(container: Any) -> str:
    return str(container.logs().decode(errors="replace"))


STEPS = 30  # 9 s a workflow: still running after its start is replicated, even on a loaded machine


def test_kill_mid_workflow_remove_volume_then_generation_2_finishes_everything(agents: Agents, tmp_path: Path) -> None:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    first = agents.start(agents.spec(tenant, 1))
    url, api = agents.ready(first), agents.api(first)
    ids = [f"job-{i}" for i in range(6)]
    for workflow_id in ids:
        answer = api.post(f"{url}/v1/workflows/count", json={"id": workflow_id, "args": [STEPS, 0.3]})
        assert answer.status_code == 201, answer.text
    restores = iter(range(1000))

    def starts_replicated() -> bool:  # the replica holds every start before the kill
        try:
            copy = agents.restore(tenant, 1, tmp_path / f"probe-{next(restores)}.db")
        except FileNotFoundError:
            return False  # nothing replicated yet
        return workflow_ids(copy) >= set(ids)

    eventually(starts_replicated, timeout=20, interval=0.1)
    time.sleep(0.4)  # and a step or two of each has run
    statuses = {api.get(f"{url}/v1/workflows/{i}").json()["status"] for i in ids}
    assert statuses == {"RUNNING"}, f"the kill must land mid-way through every workflow ({STEPS} steps x 0.3 s)"
    assert "litefleet_replication_replica_txid" in api.get(f"{url}/metrics").text
    eventually(  # the agent's own replication report (probed every 5 s) has seen its replica too
        lambda: (api.get(f"{url}/readyz").json()["replication"]["replica_txid"] or 0) >= 1, timeout=15
    )

    first.kill()
    agents.remove(first, volume=True)

    agents.advance(tenant, 2)
    second = agents.start(agents.spec(tenant, 2, restore_from=1))
    url, api = agents.ready(second), agents.api(second, timeout=65)
    assert f"fleet/tenants/{tenant}/agents/0/gen-1" in logs(second)  # restored from generation 1's replica
    for workflow_id in ids:
        answer = api.get(f"{url}/v1/workflows/{workflow_id}?wait=60").json()
        assert (answer["status"], answer["result"]) == ("SUCCESS", sum(range(STEPS)))
        steps = api.get(f"{url}/v1/workflows/{workflow_id}/steps").json()["steps"]
        assert [step["output"] for step in steps if step["kind"] == "step"] == list(range(STEPS))


@pytest.mark.parametrize("run", range(10))
def test_graceful_stop_under_load_loses_nothing(agents: Agents, tmp_path: Path, run: int) -> None:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    container = agents.start(agents.spec(tenant, 1))
    writer = Writer(agents.ready(container), f"run{run}", agents.specs[container.name].agent_token)
    writer.start()
    eventually(lambda: len(writer.acknowledged) >= 50, timeout=30, interval=0.02)
    container.stop(timeout=30)  # SIGTERM to litestream (PID 1) -> agent drains -> proven final sync
    writer.stop.set()
    writer.join(10)

    assert agents.wait_exit(container) == 0, logs(container)
    record = agents.storage.read_shutdown(tenant, 0, 1)
    assert record is not None and record["proven"] and record["reason"] == "stopped", record
    restored = workflow_ids(agents.restore(tenant, 1, tmp_path / "restored.db"))
    missing = set(writer.acknowledged) - restored
    assert not missing, f"{len(missing)} acknowledged workflows lost of {len(writer.acknowledged)}"


def test_stale_generation_refuses_to_start(agents: Agents) -> None:
    tenant = agents.tenant()
    never_current = agents.start(agents.spec(tenant, 1))  # no CURRENT at all
    assert agents.wait_exit(never_current) == 3
    agents.advance(tenant, 2)
    agents.remove(never_current, volume=False)
    stale = agents.start(agents.spec(tenant, 1))
    assert agents.wait_exit(stale) == 3
    assert "stale_generation" in logs(stale) and "generation 2" in logs(stale)
    assert agents.storage.keys(agents.storage.replica_prefix(tenant, 0, 1)) == []  # it never wrote anything


def test_a_follower_stopped_before_its_promotion_exits_at_once_and_its_source_serves_on(agents: Agents) -> None:
    """A rollback stops the follower: PID 1 (the entrypoint) exits on SIGTERM with the before-serving code, its
    `restore -f` with it, instead of `docker stop` waiting out its grace period for the SIGKILL."""
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    source = agents.start(agents.spec(tenant, 1))
    agents.ready(source)
    eventually(lambda: bool(agents.storage.keys(agents.storage.replica_prefix(tenant, 0, 1))), timeout=30)
    follower = agents.start(agents.spec(tenant, 2, restore_from=1, follow=True, follow_interval=0.25))
    eventually(lambda: "follower.following" in logs(follower), timeout=60)
    started = time.monotonic()
    follower.stop(timeout=30)
    took = time.monotonic() - started
    assert agents.wait_exit(follower) == contract.EXIT_STOPPED_BEFORE_SERVING, logs(follower)
    assert took < 5, f"stopped in {took:.1f}s: the SIGTERM was not handled"
    source.reload()
    assert source.status == "running"
    current = agents.storage.read_current(tenant, 0)
    assert current is not None and current.generation == 1  # the follower never wrote CURRENT
    assert agents.storage.keys(agents.storage.replica_prefix(tenant, 0, 2)) == []  # nor replicated


def corrupt_replica(work: Path) -> Path:
    """A file replica, as Litestream writes one, of a database whose b-tree pages 10-12 are broken (their cell
    offsets point outside the page): every LTX file is sound, the database in them is not."""
    db = work / "corrupt.db"
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=wal")
    connection.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    connection.execute("CREATE INDEX tb ON t (b)")
    connection.executemany("INSERT INTO t (b) VALUES (?)", [(f"v{i:06d}" * 10,) for i in range(5000)])
    connection.commit()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    with db.open("r+b") as file:
        for page in (10, 11, 12):
            file.seek(4096 * (page - 1) + 8)
            file.write(b"\x00\x00\xff\xff")
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA quick_check").fetchone()[0] != "ok"
    replica = work / "replica"
    config = work / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - url: file://{replica}\n")
    process = subprocess.Popen([litestream.binary(), "replicate", "-config", str(config)], stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: any(replica.glob("ltx/0/*.ltx")), timeout=30)
        time.sleep(1)
    finally:
        process.terminate()
        process.wait(10)
    return replica


def test_a_follower_of_a_corrupt_replica_exits_before_it_reports_a_txid(agents: Agents, tmp_path: Path) -> None:
    """A follower's copy is checked as it is rebuilt (`-integrity-check` on `restore -f`), while its source still
    serves: a copy that fails ends the follower with its own code (replica_corrupt, 8) before `follower status`
    shows any txid, so the control plane fails the move before it stops anything (`Fleet.catch_up`)."""
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    replica = corrupt_replica(tmp_path)
    prefix = agents.storage.replica_prefix(tenant, 0, 1)
    for path in sorted(replica.glob("ltx/*/*.ltx")):  # the S3 layout: <path>/<level as %04x>/<min>-<max>.ltx
        key = f"{prefix}{int(path.parent.name):04x}/{path.name}"
        agents.storage.s3.upload_file(str(path), agents.storage.bucket, key)
    url = agents.storage.replica_url(tenant, 0, 1)
    assert agents.storage.restore(url, tmp_path / "unchecked.db", integrity_check="none").exists(), "readable"
    follower = agents.start(agents.spec(tenant, 2, restore_from=1, follow=True, follow_interval=0.25))
    assert agents.wait_exit(follower) == contract.EXIT_REPLICA_CORRUPT, logs(follower)
    assert "integrity check failed" in logs(follower) and "replica_corrupt" in logs(follower)
    assert "follower.promoted" not in logs(follower)


def test_missing_restore_replica_fails_loudly_instead_of_starting_empty(agents: Agents) -> None:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    agents.advance(tenant, 2)
    container = agents.start(agents.spec(tenant, 2, restore_from=1))  # generation 1 never replicated anything
    assert agents.wait_exit(container) == 5
    assert "restore_failed" in logs(container)


def test_superseded_agent_stops_and_its_last_writes_stay_out_of_the_new_generation(
    agents: Agents, tmp_path: Path
) -> None:
    # The scenario: generation 1 acknowledges writes *after* generation 2 restored. Generation 2 restores before it
    # answers /readyz, so every write acknowledged after that answer is one. Generation 1 checks its fence every
    # 30 s (a loaded CI machine took more than 10 s from start to ready), which leaves it seconds of writing past
    # that point; should a slow machine still let the fence fire first, the overlap is set up again (a new
    # tenant) instead of asserting on a scenario that did not happen.
    for _attempt in range(3):
        tenant = agents.tenant()
        agents.advance(tenant, 1)
        old = agents.start(agents.spec(tenant, 1, fence_interval=30.0))
        writer = Writer(agents.ready(old), "old", agents.specs[old.name].agent_token)
        writer.start()
        eventually(lambda w=writer: len(w.acknowledged) >= 20, timeout=30, interval=0.02)  # type: ignore[misc]

        agents.advance(tenant, 2)  # a zombie overlap: generation 2 starts while generation 1 still writes
        new = agents.start(agents.spec(tenant, 2, restore_from=1))
        agents.ready(new)
        restored_by = len(writer.acknowledged)  # acknowledged from here on: after generation 2 restored
        assert agents.wait_exit(old, timeout=60) == 0, logs(old)  # it noticed and stopped itself
        writer.join(10)
        after_restore = writer.acknowledged[restored_by:]
        if after_restore:
            break
        new.stop(timeout=30)
    assert after_restore, "3 attempts: generation 1 never acknowledged a write after generation 2 restored"
    record = agents.storage.read_shutdown(tenant, 0, 1)
    assert record is not None and record["reason"] == "superseded" and record["proven"], record

    new.stop(timeout=30)
    assert agents.wait_exit(new) == 0
    old_ids = workflow_ids(agents.restore(tenant, 1, tmp_path / "gen1.db"))
    new_ids = workflow_ids(agents.restore(tenant, 2, tmp_path / "gen2.db"))
    assert set(writer.acknowledged) <= old_ids  # generation 1's own replica holds all it acknowledged
    assert not set(after_restore) & new_ids, "generation 2 holds writes generation 1 made after it restored"
    seen_by_new = sorted((int(i.split("-")[1]) for i in new_ids), reverse=True)
    assert seen_by_new, "generation 2 restored nothing"
    assert set(seen_by_new) == set(range(seen_by_new[0] + 1))  # a prefix of generation 1's history, no later writes


ROWS_PER_ROUND = 300  # 3 KB rows: ~1,000 WAL pages a round, SQLite's auto-checkpoint threshold


def test_the_replicated_runtime_never_checkpoints_behind_litestreams_back(tmp_path: Path) -> None:
    """The cause of a restored generation failing "wrong # of entries in index workflow_state_status": the
    runtime's own auto-checkpoint (every 1,000 WAL pages) restarted the WAL under Litestream, which then shipped a
    full snapshot read from the live database file while the runtime kept writing and checkpointing it. The agent
    runs the runtime exactly as `serve --replicated` opens it; Litestream (its real binary, a file replica) syncs
    only when asked, after each round of writes. With checkpoints left to SQLite, every round after the first
    forced a snapshot ("wal overwritten by another process"); the replicated runtime must cause none."""
    db = tmp_path / "agent.db"
    Store(str(db)).close()  # the entrypoint creates the schema before Litestream starts
    args = _parser().parse_args(["serve", "--replicated", "--bundle", "tenants.hello", "--db", str(db)])
    runtime = open_runtime(args, load_bundle("tenants.hello"))
    socket, log = tmp_path / "ls.sock", tmp_path / "litestream.log"
    document = {
        "logging": {"level": "debug"},  # the only place Litestream says why it snapshots
        "dbs": [{"path": str(db), "monitor-interval": "1h", "replica": {"url": f"file://{tmp_path / 'replica'}"}}],
        "socket": {"enabled": True, "path": str(socket)},
    }
    document["dbs"][0]["replica"]["sync-interval"] = "1h"  # type: ignore[index]
    config = tmp_path / "litestream.json"
    config.write_text(json.dumps(document))
    with log.open("w") as output:
        process = subprocess.Popen(
            [litestream.binary(), "replicate", "-config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=litestream.environment(),
        )
    try:
        eventually(lambda: socket.exists(), timeout=10)
        assert litestream.sync_wait(socket, db).caught_up  # the first sync: Litestream's one snapshot
        runtime.store.write(lambda c: c.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, status TEXT, body BLOB)"))
        written = 0
        for _round in range(6):
            for _ in range(ROWS_PER_ROUND):
                written += 1
                runtime.store.write(
                    lambda c, n=written: c.execute(  # type: ignore[misc]
                        "INSERT INTO rows VALUES (?, 'PENDING', randomblob(3000));"
                        "UPDATE rows SET status = 'SUCCESS' WHERE id = ? - 1",
                        (n, n),
                    )
                )
            assert litestream.sync_wait(socket, db).caught_up
        runtime.close()
        assert litestream.sync_wait(socket, db).caught_up
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    syncs = [line for line in log.read_text().splitlines() if "msg=sync " in line]
    snapshots = [line for line in syncs if "snap=true" in line]
    assert len(syncs) > 4 and len(snapshots) == 1, "\n".join(snapshots[1:])
    restored = restore_file(tmp_path / "replica", tmp_path / "restored.db")
    connection = apsw.Connection(str(restored), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert connection.execute("SELECT count(*) FROM rows").fetchone() == (written,)
    finally:
        connection.close()


def restore_file(replica: Path, into: Path) -> Path:
    """Restore a file replica with a full integrity check (raises when it fails)."""
    command = [litestream.binary(), "restore", "-integrity-check", "full", "-o", str(into), f"file://{replica}"]
    done = subprocess.run(command, capture_output=True, text=True, env=litestream.environment(), check=False)
    assert done.returncode == 0, done.stderr
    return into


def test_only_a_replicated_runtime_leaves_checkpoints_to_litestream(tmp_path: Path) -> None:
    for flags, expected in (([], 1000), (["--replicated"], 0)):  # SQLite's default: 1,000 pages
        db = tmp_path / f"{len(flags)}.db"
        args = _parser().parse_args(["serve", *flags, "--bundle", "tenants.hello", "--db", str(db)])
        runtime = open_runtime(args, load_bundle("tenants.hello"))
        try:
            assert runtime.store.read(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()) == (expected,)
            assert runtime.store.write(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()) == (expected,)
        finally:
            runtime.close()
