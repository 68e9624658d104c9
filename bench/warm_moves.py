"""Warm vs cold evacuation downtime per agent, by database size, on two namespaced node engines (needs root).

    make bench            (or: .venv/bin/python bench/warm_moves.py [--sizes 1,50] [--runs 3])

For each size one tenant (1 agent) is provisioned on a database of that size (runtime schema + incompressible
filler, replicated beforehand as its generation 1: the entrypoint restores its own generation's replica), with a
client starting workflows through the router all along. It is then evacuated back and forth between the two
nodes, alternating `strategy: warm` and `strategy: cold` (`--runs` each), so both strategies see the same
database, nodes and load in the same run.

Figures (one JSON line each, per size):
  evacuate_downtime_s[warm]   the operation's record: old stopped -> promoted follower ready and replicating
  evacuate_downtime_s[cold]   the baseline, same run: old stopped -> new generation restored in full, ready
  ratio = warm p50 / cold p50; `failed` counts the router client's failed requests during that strategy's moves
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402
from agent_container import replicated_database  # noqa: E402 (a sibling in bench/)
from fleet import RouterClient  # noqa: E402

from control_plane.cli.local import ControlPlaneProcess  # noqa: E402
from control_plane.client import FleetClient  # noqa: E402
from control_plane.drivers.images import build_agent_image  # noqa: E402
from control_plane.storage import ObjectStorage  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402
from infra.testbed import Testbed, TestbedNode  # noqa: E402

BUCKET = "litefleet-bench"


def emit(name: str, values: list[float], **fields: Any) -> None:
    summary = {"p50": round(statistics.median(values), 3), "max": round(max(values), 3), "n": len(values)}
    print(json.dumps({"metric": name, **summary, **fields}), flush=True)


PARTS = ("stop_s", "proof_s", "current_s", "order_s", "ready_s", "seconds")


def parts(op: dict[str, Any]) -> dict[str, float]:
    """Where one move's time went, from its step log: each step's timed parts (`agent.stopped` stop_s/proof_s,
    `agent.promoted` current_s/order_s/ready_s, `agent.started` seconds, `agent.replicated` seconds) and the
    seconds between consecutive steps from the stop on (`gap:<step>`)."""
    found: dict[str, float] = {}
    previous: float | None = None
    for step in op["steps"]:
        if step.get("agent") != 0:
            continue
        name = step["step"].removeprefix("agent.")
        if name == "stopped" or previous is not None:
            if previous is not None:
                found[f"gap:{name}"] = round(step["at"] - previous, 3)
            previous = step["at"]
            for key in PARTS:
                if isinstance(step.get(key), int | float):
                    found[f"{name}.{key}"] = step[key]
    return found


def promotion_phases(nodes: list[TestbedNode], op: dict[str, Any]) -> dict[str, Any]:
    """Where a promoted follower's start went, from its container's log (it stays until the next move): each
    `agent.start_phase` mark after `follower.promoted`, in seconds after it (the container's clock)."""
    step = next(s for s in op["steps"] if s["step"] == "agent.promoted")
    node = next(n for n in nodes if n.name == step["node"])
    client = node.client()
    container = next(c for c in client.containers.list() if c.name.endswith(f"-0-g{step['generation']}"))
    lines = container.logs(stdout=False).splitlines()
    events = [json.loads(line) for line in lines if line[:1] == b"{"]
    promoted = next(e for e in events if e.get("event") == "follower.promoted")
    at = dt.datetime.fromisoformat(promoted["timestamp"].replace("Z", "+00:00")).timestamp()
    phases: dict[str, Any] = {"tail_s": promoted.get("tail_s", 0.0), "checked_s": promoted.get("checked_s", 0.0)}
    # Litestream's own lines: when its follow loop applied new LTX files in the 3 s before the promotion (how often
    # it polls the store while the source writes: the tail waits for the next of these)
    applied = [
        dt.datetime.fromisoformat(line.split(b" ", 1)[0][5:].decode().replace("Z", "+00:00")).timestamp() - at
        for line in lines
        if line.startswith(b"time=") and b"follow: applied updates" in line
    ]
    phases["follow_applies_s"] = [round(t, 3) for t in applied if -3 <= t <= 0.5]
    for event in events:
        if event.get("event") == "agent.start_phase" and event.get("at", 0) > at:
            phases[event["phase"]] = round(event["at"] - at, 3)
    return phases


def evacuate(
    api: FleetClient, tenant: str, strategy: str, size_mb: int, nodes: list[TestbedNode]
) -> tuple[float, float, float]:
    """(downtime, began, ended) of one evacuation with `strategy`; prints where its time went (`move_parts`, and
    for a warm move the promoted follower's own phases, `promotion_phases`)."""
    began = time.monotonic()
    op = api.wait("POST", f"/v1/tenants/{tenant}/evacuate", json_body={"strategy": strategy})
    ended = time.monotonic()
    if op["state"] != "succeeded" or op["result"]["strategy"][f"{tenant}/0"] != strategy:
        raise SystemExit(f"evacuation ({strategy}) of {tenant} did not succeed as asked: {op['error']}")
    downtime = float(op["result"]["downtime_s"][f"{tenant}/0"])
    detail = {"metric": "move_parts", "strategy": strategy, "size_mb": size_mb, "downtime_s": downtime}
    detail["op_s"] = round(ended - began, 3)
    print(json.dumps({**detail, **parts(op)}), flush=True)
    if strategy == "warm":
        print(json.dumps({"metric": "promotion_phases", "size_mb": size_mb, **promotion_phases(nodes, op)}), flush=True)
    return downtime, began, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="evacuations per strategy and size")
    parser.add_argument("--sizes", default="1,50", help="database sizes in MB (comma-separated)")
    parser.add_argument("--prefix", default="lfbw", help="the test bed's names (several beds on one host differ)")
    parser.add_argument("--subnet", default="10.96.0", help="the test bed's /24")
    args = parser.parse_args()
    image = build_agent_image(docker.from_env()).tag
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        bed = Testbed(scratch / "bed", prefix=args.prefix, subnet=args.subnet)
        store = None
        plane = None
        try:
            nodes = bed.up(2)
            store = EmbeddedStore(scratch / "store", free_address(bed.gateway), BUCKET, "BENCH", "b" * 32)
            store.up()
            storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
            storage.ensure_bucket()
            (scratch / "plane").mkdir()
            plane = ControlPlaneProcess.beside(store, image, scratch / "plane", pki_dir=str(bed.pki_dir))
            plane.start()
            for node in nodes:
                plane.register(node.name, node.engine_url, node.ip, tls=node.tls_name)
            api = plane.client
            for megabytes in [int(size) for size in args.sizes.split(",")]:
                tenant = f"w{megabytes}-" + secrets.token_hex(3)
                replicated_database(storage, store.admin, tenant, megabytes, scratch)
                op = api.wait("POST", "/v1/tenants", json_body={"name": tenant, "agents": 1, "sync_interval": 0.2})
                if op["state"] != "succeeded":
                    raise SystemExit(f"provisioning {tenant} failed: {op['error']}")
                client = RouterClient(api, tenant)
                client.start()
                time.sleep(2)
                downtimes: dict[str, list[float]] = {"warm": [], "cold": []}
                failed = {"warm": 0, "cold": 0}
                for _ in range(args.runs):
                    for strategy in ("warm", "cold"):
                        downtime, began, ended = evacuate(api, tenant, strategy, megabytes, nodes)
                        downtimes[strategy].append(downtime)
                        time.sleep(1)
                        failed[strategy] += client.failed_between(began, ended)
                client.stop.set()
                client.join(60)
                ratio = statistics.median(downtimes["warm"]) / statistics.median(downtimes["cold"])
                emit(
                    "evacuate_downtime_s", downtimes["cold"], strategy="cold", size_mb=megabytes, failed=failed["cold"]
                )
                emit(
                    "evacuate_downtime_s",
                    downtimes["warm"],
                    strategy="warm",
                    size_mb=megabytes,
                    failed=failed["warm"],
                    ratio_vs_cold=round(ratio, 2),
                )
                api.wait("DELETE", f"/v1/tenants/{tenant}", purge=True)
        finally:
            if plane is not None:
                plane.stop()
            if store is not None:
                store.down()
            bed.down()


if __name__ == "__main__":
    main()
