"""The agent container against real Docker, SeaweedFS and Litestream: kills, graceful stops, fencing.

The monotonic counter is the sequence of workflow ids the agent acknowledged (HTTP 201 after the row committed):
whatever was acknowledged must be in the replica after a graceful stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from control_plane.drivers.agent_spec import wait_ready
from tests.integration.conftest import Agents, eventually


class Writer(threading.Thread):
    """Starts `count` workflows `{prefix}-0, -1, ...` one after another and remembers which were acknowledged."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.url, self.prefix = url, prefix
        self.acknowledged: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
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
    url = wait_ready(first)
    ids = [f"job-{i}" for i in range(6)]
    for workflow_id in ids:
        answer = httpx.post(f"{url}/v1/workflows/count", json={"id": workflow_id, "args": [STEPS, 0.3]}, timeout=5)
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
    statuses = {httpx.get(f"{url}/v1/workflows/{i}", timeout=5).json()["status"] for i in ids}
    assert statuses == {"RUNNING"}, f"the kill must land mid-way through every workflow ({STEPS} steps x 0.3 s)"
    assert "litefleet_replication_replica_txid" in httpx.get(f"{url}/metrics", timeout=5).text
    eventually(  # the agent's own replication report (probed every 5 s) has seen its replica too
        lambda: (httpx.get(f"{url}/readyz", timeout=5).json()["replication"]["replica_txid"] or 0) >= 1, timeout=15
    )

    first.kill()
    agents.remove(first, volume=True)

    agents.advance(tenant, 2)
    second = agents.start(agents.spec(tenant, 2, restore_from=1))
    url = wait_ready(second)
    assert f"fleet/tenants/{tenant}/agents/0/gen-1" in logs(second)  # restored from generation 1's replica
    for workflow_id in ids:
        answer = httpx.get(f"{url}/v1/workflows/{workflow_id}?wait=60", timeout=65).json()
        assert (answer["status"], answer["result"]) == ("SUCCESS", sum(range(STEPS)))
        steps = httpx.get(f"{url}/v1/workflows/{workflow_id}/steps", timeout=5).json()["steps"]
        assert [step["output"] for step in steps if step["kind"] == "step"] == list(range(STEPS))


@pytest.mark.parametrize("run", range(10))
def test_graceful_stop_under_load_loses_nothing(agents: Agents, tmp_path: Path, run: int) -> None:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    container = agents.start(agents.spec(tenant, 1))
    writer = Writer(wait_ready(container), f"run{run}")
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
        writer = Writer(wait_ready(old), "old")
        writer.start()
        eventually(lambda w=writer: len(w.acknowledged) >= 20, timeout=30, interval=0.02)  # type: ignore[misc]

        agents.advance(tenant, 2)  # a zombie overlap: generation 2 starts while generation 1 still writes
        new = agents.start(agents.spec(tenant, 2, restore_from=1))
        wait_ready(new)
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
