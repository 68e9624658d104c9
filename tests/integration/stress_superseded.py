"""Stress the superseded-agent stop path against real Docker, SeaweedFS and Litestream; count corrupt replicas.

`python -m tests.integration.stress_superseded RUNS [--fence SECONDS]` repeats the scenario of
`test_superseded_agent_stops_and_its_last_writes_stay_out_of_the_new_generation` (generation 1 writes, generation 2
restores from it, generation 1 notices CURRENT moved and stops itself) and checks, each run:
  - generation 1's local database (its volume, after it exited) with `PRAGMA integrity_check`;
  - a full-integrity-check restore of generation 1's replica, and of generation 2's.
A failure keeps its replica and volume copy under the printed directory for inspection."""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw
import docker

from control_plane.drivers.host_address import local_host_address
from control_plane.drivers.images import build_agent_image
from control_plane.storage import SeaweedCredentials
from tests.integration.conftest import Agents, admin_storage, eventually, start_store
from tests.integration.test_agent_container import Writer


def integrity(db: Path) -> str:
    connection = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    finally:
        connection.close()
    return "; ".join(rows)


def volume_copy(client: Any, name: str, into: Path) -> Path:
    """Copy a (stopped) container's volume out of the engine's data root: the database as the agent left it."""
    mountpoint = Path(client.volumes.get(name).attrs["Mountpoint"])
    shutil.copytree(mountpoint, into)
    return into / "agent.db"


def one_run(agents: Agents, work: Path, fence: float) -> dict[str, Any]:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    old = agents.start(agents.spec(tenant, 1, fence_interval=fence))
    spec = agents.specs[old.name]
    writer = Writer(agents.ready(old), "old", spec.agent_token)
    writer.start()
    eventually(lambda: len(writer.acknowledged) >= 20, timeout=30, interval=0.02)
    agents.advance(tenant, 2)
    new = agents.start(agents.spec(tenant, 2, restore_from=1))
    agents.ready(new)
    restored_by = len(writer.acknowledged)
    code = agents.wait_exit(old, timeout=fence * 2 + 60)
    writer.join(10)
    record = agents.storage.read_shutdown(tenant, 0, 1)
    new.stop(timeout=30)
    result: dict[str, Any] = {
        "tenant": tenant,
        "exit": code,
        "acknowledged": len(writer.acknowledged),
        "after_restore": len(writer.acknowledged) - restored_by,
        "record": record,
    }
    local = volume_copy(agents.client, spec.volume, work / "gen1-volume")
    result["local"] = integrity(local)
    for generation in (1, 2):
        try:
            agents.restore(tenant, generation, work / f"gen{generation}.db")
            result[f"restore{generation}"] = "ok"
        except Exception as exc:
            result[f"restore{generation}"] = str(exc)
    bad = result["local"] != "ok" or result["restore1"] != "ok" or result["restore2"] != "ok"
    if bad:
        keys = agents.storage.keys(agents.storage.replica_prefix(tenant, 0, 1))
        replica = work / "gen1-replica"
        for key in keys:
            target = replica / key.rsplit("/gen-1/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            agents.storage.s3.download_file(agents.storage.bucket, key, str(target))
        (work / "gen1.log").write_bytes(old.logs())
    else:
        shutil.rmtree(work, ignore_errors=True)
    result["bad"] = bad
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=int)
    parser.add_argument("--fence", type=float, default=3.0, help="generation 1's fence interval (the test: 30)")
    args = parser.parse_args()
    client = docker.from_env(timeout=120)
    image = build_agent_image(client).tag
    root = Path(tempfile.mkdtemp(prefix="lfc-stress-"))
    store = start_store(root / "store", local_host_address())
    storage = admin_storage(store)
    bad = 0
    try:
        for run in range(args.runs):
            agents = Agents(client, image, store, storage, SeaweedCredentials(store, storage))
            started = time.monotonic()
            try:
                result = one_run(agents, root / f"run-{run}-{secrets.token_hex(2)}", args.fence)
            finally:
                agents.cleanup()
            bad += result["bad"]
            result["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps({"run": run, **result}, default=str), flush=True)
    finally:
        store.down()
    print(json.dumps({"runs": args.runs, "bad": bad, "kept": str(root)}), flush=True)


if __name__ == "__main__":
    main()
