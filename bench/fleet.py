"""The control plane's operations against doing the same by hand, on two namespaced node engines (needs root).

    make bench            (or: .venv/bin/python bench/fleet.py [--runs 5] [--drain-agents 6])

Figures (one JSON line each; p50/p90 of --runs):
  provision_s           POST /v1/tenants (1 agent) with ?wait=true: placement, key, CURRENT, container, ready,
                        first replica, rows and events
  baseline_start_s      the floor: `run_agent` + wait for /readyz and the first replica, by hand, same engine
  evacuate_s            POST /v1/tenants/{t}/evacuate (1 agent, to the other node) with ?wait=true
  evacuate_downtime_s   the operation's own record: old stopped -> new generation ready and replicating
  baseline_move_s       the floor: `docker stop` (final sync) + `run_agent` restoring on the other node + ready
  drain_s               POST /v1/nodes/{n}/drain with --drain-agents agents on the node
  router_during_moves_s a client starting workflows through the router, one after another, while each evacuation
                        runs: failed requests (target 0: held while the agent moves) and the latency p50/max of its
                        requests during the moves, next to its p50 outside them (the baseline, same run)
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from control_plane.cli.local import ControlPlaneProcess  # noqa: E402
from control_plane.client import FleetClient  # noqa: E402
from control_plane.drivers.agent_http import wait_ready  # noqa: E402
from control_plane.drivers.agent_spec import AgentSpec, run_agent  # noqa: E402
from control_plane.drivers.images import build_agent_image  # noqa: E402
from control_plane.storage import ObjectStorage, SeaweedCredentials  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402
from infra.testbed import Testbed, TestbedNode  # noqa: E402

BUCKET = "litefleet-bench"


def emit(name: str, values: list[float], **fields: Any) -> None:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    summary = {"p50": round(statistics.median(ordered), 3), "p90": round(p90, 3), "n": len(ordered)}
    print(json.dumps({"metric": name, **summary, **fields}), flush=True)


def timed(
    api: FleetClient, method: str, path: str, json_body: Any = None, **params: Any
) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    op = api.wait(method, path, json_body=json_body, **params)
    if op["state"] != "succeeded":
        raise SystemExit(f"{method} {path} did not succeed: {op}")
    return time.monotonic() - started, op


class RouterClient(threading.Thread):
    """Starts workflows through the control plane's router one after another; records (sent at, seconds, ok)."""

    def __init__(self, api: FleetClient, tenant: str) -> None:
        super().__init__(daemon=True)
        self.api, self.tenant = api, tenant
        self.requests: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                answer = self.api.send(
                    "POST", f"/v1/tenants/{self.tenant}/workflows/count", json={"args": [1]}, timeout=60
                )
                ok = answer.status_code in (200, 201)
            except Exception:  # the figure counts it as failed, whatever it was
                ok = False
            self.requests.append((sent, time.monotonic() - sent, ok))

    def failed_between(self, began: float, ended: float) -> int:
        return sum(1 for sent, seconds, ok in self.requests if not ok and sent < ended and sent + seconds > began)


def by_hand_ready(container: Any, token: str) -> None:
    """What the control plane waits for: /readyz 200 (with the agent's token) and a replica txid."""
    container.reload()
    port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]
    url = f"http://{port['HostIp']}:{port['HostPort']}"
    wait_ready(lambda: url, token=token, timeout=600, replicated=True, interval=0.02)


def baselines(store: EmbeddedStore, image: str, nodes: list[TestbedNode], runs: int) -> None:
    storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
    credentials = SeaweedCredentials(store, storage)
    starts, moves = [], []
    for _ in range(runs):
        tenant = "h" + secrets.token_hex(4)
        admin_token = secrets.token_urlsafe(32)
        clients = [node.client(timeout=120) for node in nodes]

        def spec(
            generation: int, node: TestbedNode, restore: int | None, tenant: str = tenant, admin: str = admin_token
        ) -> AgentSpec:
            return AgentSpec(
                tenant=tenant, agent=0, generation=generation, bundle="tenants.hello", image=image,
                replica_url=storage.replica_url(tenant, 0, generation),
                restore_from_url=None if restore is None else storage.replica_url(tenant, 0, restore),
                s3_endpoint=store.address.endpoint, credentials=credentials.issue_incarnation(tenant, 0, generation),
                agent_token=secrets.token_urlsafe(32), admin_token=admin, publish_ip=node.ip,
            )  # fmt: skip

        storage.advance_current(tenant, 0, 1, None)
        first_spec = spec(1, nodes[0], None)
        started = time.monotonic()
        first = run_agent(clients[0], first_spec)  # creates, starts, delivers the secrets (as the control plane)
        by_hand_ready(first, first_spec.agent_token)
        starts.append(time.monotonic() - started)
        storage.advance_current(tenant, 0, 2, storage.read_current(tenant, 0))
        started = time.monotonic()
        first.stop(timeout=30)
        second_spec = spec(2, nodes[1], 1)
        second = run_agent(clients[1], second_spec)
        by_hand_ready(second, second_spec.agent_token)
        moves.append(time.monotonic() - started)
        for container in (first, second):
            container.remove(force=True, v=True)
        clients[0].volumes.get(first_spec.volume).remove(force=True)
        clients[1].volumes.get(second.name).remove(force=True)
    emit("baseline_start_s", starts)
    emit("baseline_move_s", moves)


def cutovers(op: dict[str, Any]) -> list[list[float]]:
    """Each agent's cutover in a node's operation, [from the source's SIGTERM, to the new generation routed] in
    seconds after the first began, from the step log: how many overlapped (pacing, reconciler/pacing.py)."""

    def agent(step: dict[str, Any]) -> tuple[str, int]:
        return step["tenant"], step["agent"]

    stopped = {agent(s): s["at"] - s["stop_s"] - s["proof_s"] for s in op["steps"] if s["step"] == "agent.stopped"}
    routed = {agent(s): s["at"] for s in op["steps"] if s["step"] in ("agent.promoted", "agent.started")}
    first = min(stopped.values(), default=0.0)
    return sorted(
        [round(stopped[t] - first, 2), round(routed[t] - first, 2)]
        for t in stopped
        if t in routed and routed[t] > stopped[t]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--drain-agents", type=int, default=6)
    parser.add_argument("--prefix", default="lfb", help="the test bed's names (several beds on one host differ)")
    parser.add_argument("--subnet", default="10.97.0", help="the test bed's /24")
    args = parser.parse_args()
    image = build_agent_image(docker.from_env()).tag
    with tempfile.TemporaryDirectory() as scratch:
        bed = Testbed(Path(scratch) / "bed", prefix=args.prefix, subnet=args.subnet)
        store = None
        plane = None
        try:
            nodes = bed.up(2)
            store = EmbeddedStore(Path(scratch) / "store", free_address(bed.gateway), BUCKET, "BENCH", "b" * 32)
            store.up()
            ObjectStorage(store.address.endpoint, *store.admin, BUCKET).ensure_bucket()
            for node in nodes:  # copy the image once, outside the measurements
                from control_plane.drivers import DockerDriver

                DockerDriver(node.engine_url, tls=node.tls).ensure_image(image)
            baselines(store, image, nodes, args.runs)
            plane = ControlPlaneProcess.beside(store, image, Path(scratch), pki_dir=str(bed.pki_dir))
            plane.start()
            for node in nodes:
                plane.register(node.name, node.engine_url, node.ip, tls=node.tls_name)
            api = operations = plane.client
            provisions, evacuations, downtimes = [], [], []
            during: list[tuple[float, float, bool]] = []
            outside: list[tuple[float, float, bool]] = []
            for _ in range(args.runs):
                tenant = "b" + secrets.token_hex(4)
                seconds, _ = timed(operations, "POST", "/v1/tenants", {"name": tenant, "agents": 1})
                provisions.append(seconds)
                source = api.send("GET", f"/v1/tenants/{tenant}").json()["placements"][0]["node"]
                target = next(node.name for node in nodes if node.name != source)
                client = RouterClient(api, tenant)
                client.start()
                time.sleep(2)
                began = time.monotonic()
                seconds, op = timed(operations, "POST", f"/v1/tenants/{tenant}/evacuate", {"to_node": target})
                ended = time.monotonic()
                time.sleep(2)
                client.stop.set()
                client.join(60)
                for request in client.requests:  # a request counts for the move when it overlapped it
                    (during if request[0] < ended and request[0] + request[1] > began else outside).append(request)
                evacuations.append(seconds)
                downtimes.append(op["result"]["downtime_s"][f"{tenant}/0"])
                timed(operations, "DELETE", f"/v1/tenants/{tenant}", purge=True)
            emit("provision_s", provisions)
            emit("evacuate_s", evacuations)
            emit("evacuate_downtime_s", downtimes)
            latencies = [seconds for _, seconds, _ in during]
            emit(
                "router_during_moves_s",
                latencies,
                max=round(max(latencies), 3),
                failed=sum(1 for *_, ok in during if not ok),
                requests=len(during),
                baseline_p50=round(statistics.median(seconds for _, seconds, ok in outside if ok), 4),
                baseline_failed=sum(1 for *_, ok in outside if not ok),
            )
            api.send("POST", f"/v1/nodes/{nodes[1].name}/cordon")
            tenants = ["d" + secrets.token_hex(4) for _ in range(args.drain_agents)]
            for tenant in tenants:
                timed(operations, "POST", "/v1/tenants", {"name": tenant, "agents": 1})
            api.send("POST", f"/v1/nodes/{nodes[1].name}/uncordon")
            seconds, op = timed(operations, "POST", f"/v1/nodes/{nodes[0].name}/drain")
            drained = sorted(op["result"]["downtime_s"].values())
            emit(
                "drain_s",
                [seconds],
                agents=args.drain_agents,
                downtime_p50=statistics.median(drained),
                downtimes=drained,
                ratio_vs_single=round(statistics.median(drained) / statistics.median(downtimes), 2),
                cutovers=cutovers(op),
            )
        finally:
            if plane is not None:
                plane.stop()
            if store is not None:
                store.down()
            bed.down()


if __name__ == "__main__":
    main()
