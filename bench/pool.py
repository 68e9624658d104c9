"""Provisioning from the warm pool against a cold provision and the by-hand floor, on one namespaced node engine
(needs root), all in the same run.

    make bench            (or: .venv/bin/python bench/pool.py [--runs 5] [--prefix lfb] [--subnet 10.97.0])

Figures (one JSON line each; p50/p90 of --runs):
  baseline_start_s   the floor: `run_agent` + wait for /readyz and the first replica, by hand, same engine, one
                     before each API provision (interleaved with both control planes' runs)
  provision_cold_s   POST /v1/tenants (1 agent) with ?wait=true on a control plane without a pool
  provision_pool_s   the same on a control plane with LITEFLEET_WARM_POOL_SIZE=1, each time once the node's pool
                     shows a ready container (`GET /v1/nodes`): the claim (rename, tenant network, limits, identity
                     and secrets by one docker exec) instead of create + start
  driver_cold_s      no control plane: `DockerDriver.run` + /readyz and the first replica (no tenant network)
  driver_claim_s     the same through `DockerDriver.claim` of a pool container that idles, ready, on the node
                     (cold and claim alternate, start for start)
  *_agent_s          of which the operation's own `agent.started` span: container created or claimed -> /readyz
                     and the first replica (the rest: the API, the queue, placement, the key, CURRENT, rows)
Both control planes run tenant networks (a tenant's own bridge and rules), as a real fleet does; `--no-isolation`
measures without them."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import docker  # noqa: E402
from fleet import BUCKET, by_hand_ready, emit, timed  # noqa: E402 (a sibling in bench/)

from control_plane.cli.local import ControlPlaneProcess  # noqa: E402
from control_plane.drivers import DockerDriver  # noqa: E402
from control_plane.drivers.agent_spec import AgentSpec, PoolSpec, run_agent  # noqa: E402
from control_plane.drivers.images import build_agent_image  # noqa: E402
from control_plane.storage import ObjectStorage, SeaweedCredentials  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402
from control_plane.timing import poll  # noqa: E402
from infra.testbed import Testbed, TestbedNode  # noqa: E402


class ByHand:
    """The floor, one start per call: `run_agent` + /readyz and the first replica, no control plane, same engine."""

    def __init__(self, store: EmbeddedStore, image: str, node: TestbedNode) -> None:
        self.storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
        self.credentials = SeaweedCredentials(store, self.storage)
        self.store, self.image, self.node = store, image, node
        self.client = node.client(timeout=120)
        self.starts: list[float] = []

    def __call__(self) -> None:
        tenant = "h" + secrets.token_hex(4)
        spec = AgentSpec(
            tenant=tenant, agent=0, generation=1, bundle="tenants.hello", image=self.image,
            replica_url=self.storage.replica_url(tenant, 0, 1), s3_endpoint=self.store.address.endpoint,
            credentials=self.credentials.issue_incarnation(tenant, 0, 1), agent_token=secrets.token_urlsafe(32),
            admin_token=secrets.token_urlsafe(32), publish_ip=self.node.ip,
        )  # fmt: skip
        self.storage.advance_current(tenant, 0, 1, None)
        started = time.monotonic()
        container = run_agent(self.client, spec)
        by_hand_ready(container, spec.agent_token)
        self.starts.append(time.monotonic() - started)
        container.remove(force=True, v=True)
        self.client.volumes.get(spec.volume).remove(force=True)


def driver_level(store: EmbeddedStore, image: str, node: TestbedNode, runs: int) -> tuple[list[float], list[float]]:
    storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
    credentials = SeaweedCredentials(store, storage)
    driver = DockerDriver(node.engine_url, tls=node.tls)
    fleet = "bench-pool"
    cold: list[float] = []
    claimed: list[float] = []
    for _ in range(runs):
        for into in (cold, claimed):
            tenant = "d" + secrets.token_hex(4)
            spec = AgentSpec(
                tenant=tenant, agent=0, generation=1, bundle="tenants.hello", image=image,
                replica_url=storage.replica_url(tenant, 0, 1), s3_endpoint=store.address.endpoint,
                credentials=credentials.issue_incarnation(tenant, 0, 1), agent_token=secrets.token_urlsafe(32),
                admin_token=secrets.token_urlsafe(32), publish_ip=node.ip, fleet=fleet,
            )  # fmt: skip
            storage.advance_current(tenant, 0, 1, None)
            member = None
            if into is claimed:
                member = driver.start_pool(PoolSpec(image=image, fleet=fleet, publish_ip=node.ip))
                for _ in poll(60, 0.05):  # idle: its entrypoint waits for a claim
                    if b"agent.pooled" in node.client().containers.get(member.name).logs():
                        break
            started = time.monotonic()
            incarnation = driver.run(spec) if member is None else driver.claim(member.name, spec)
            assert incarnation is not None
            by_hand_ready(node.client().containers.get(spec.name), spec.agent_token)
            into.append(time.monotonic() - started)
            driver.remove(spec.name)
    return cold, claimed


def provisions(
    store: EmbeddedStore,
    image: str,
    node: TestbedNode,
    scratch: Path,
    bed: Testbed,
    runs: int,
    pool: int,
    between: Callable[[], None],
    **extra: str,
) -> tuple[list[float], list[float]]:
    """`runs` provisions through the API, each after one `between()` (the by-hand floor, interleaved)."""
    state = scratch / f"plane-pool{pool}"
    state.mkdir()
    plane = ControlPlaneProcess.beside(
        store, image, state, pki_dir=str(bed.pki_dir), warm_pool_size=str(pool), warm_pool_interval="0.5", **extra
    )
    plane.start()
    try:
        plane.register(node.name, node.engine_url, node.ip, tls=node.tls_name)
        api = plane.client
        seconds_each, agent_each = [], []
        for _ in range(runs):
            between()
            if pool:
                for _ in poll(120, 0.2):  # the refill has a ready container on the node again
                    if api.send("GET", f"/v1/nodes/{node.name}").json().get("pool_ready", 0) >= 1:
                        break
            tenant = "p" + secrets.token_hex(4)
            posted = time.time()
            seconds, op = timed(api, "POST", "/v1/tenants", {"name": tenant, "agents": 1})
            answered = time.time()
            claimed = any(step.get("step") == "agent.claimed" for step in op["steps"])
            if claimed != bool(pool):
                raise SystemExit(f"provision of {tenant}: claimed={claimed} with a pool of {pool}")
            seconds_each.append(seconds)
            agent_each.append(next(s["seconds"] for s in op["steps"] if s.get("step") == "agent.started"))
            print(json.dumps({"pool": pool, "created_at": op.get("created_at"), "steps": op["steps"]}), file=sys.stderr)
            print(json.dumps(profile(node, tenant, pool, posted, answered, op)), file=sys.stderr)
            timed(api, "DELETE", f"/v1/tenants/{tenant}", purge=True)
        return seconds_each, agent_each
    finally:
        plane.stop()
        for line in plane.log.read_text().splitlines():  # where each claim's time went (pool.claimed)
            if '"pool.claimed"' in line:
                print(line, file=sys.stderr)
        for container in node.client().containers.list(all=True, filters={"label": "io.litefleet.pool=true"}):
            DockerDriver(node.engine_url, tls=node.tls).remove(container.name)


def profile(node: TestbedNode, tenant: str, pool: int, posted: float, answered: float, op: dict[str, Any]) -> Any:
    """Where one provision's time went, in seconds after the POST (one clock: the containers share the host's):
    the operation's steps and the agent's own start phases (`agent.start_phase`, from its container's log)."""
    marks: dict[str, float] = {"answered": answered - posted}
    for step in op["steps"]:
        if isinstance(step.get("at"), int | float):
            marks.setdefault(str(step.get("step")), step["at"] - posted)
    container = node.client().containers.get(f"lf-{tenant}-0-g1")
    for line in container.logs().decode(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "agent.start_phase" and isinstance(event.get("at"), int | float):
            marks.setdefault(f"phase.{event['phase']}", event["at"] - posted)
    ordered = sorted(marks.items(), key=lambda item: item[1])
    return {
        "profile": "pool" if pool else "cold",
        "tenant": tenant,
        "after_post_s": {k: round(v, 3) for k, v in ordered},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefix", default="lfb", help="the test bed's names (several beds on one host differ)")
    parser.add_argument("--subnet", default="10.97.0", help="the test bed's /24")
    parser.add_argument("--no-isolation", action="store_true", help="control planes without tenant networks")
    parser.add_argument("--skip-driver", action="store_true", help="no driver-level figures (API and by hand only)")
    args = parser.parse_args()
    image = build_agent_image(docker.from_env()).tag
    extra = {"tenant_networks": "false"} if args.no_isolation else {}
    with tempfile.TemporaryDirectory() as scratch:
        bed = Testbed(Path(scratch) / "bed", prefix=args.prefix, subnet=args.subnet)
        store = None
        try:
            (node,) = bed.up(1)
            store = EmbeddedStore(Path(scratch) / "store", free_address(bed.gateway), BUCKET, "BENCH", "b" * 32)
            store.up()
            ObjectStorage(store.address.endpoint, *store.admin, BUCKET).ensure_bucket()
            DockerDriver(node.engine_url, tls=node.tls).ensure_image(image)  # outside the measurements
            if not args.skip_driver:
                driver_cold, driver_claim = driver_level(store, image, node, args.runs)
                emit("driver_cold_s", driver_cold)
                emit("driver_claim_s", driver_claim)
            by_hand = ByHand(store, image, node)
            cold = provisions(store, image, node, Path(scratch), bed, args.runs, 0, by_hand, **extra)
            warm = provisions(store, image, node, Path(scratch), bed, args.runs, 1, by_hand, **extra)
            emit("baseline_start_s", by_hand.starts)
            emit("provision_cold_s", cold[0], isolation=not args.no_isolation)
            emit("provision_cold_agent_s", cold[1])
            emit("provision_pool_s", warm[0], isolation=not args.no_isolation)
            emit("provision_pool_agent_s", warm[1])
        finally:
            if store is not None:
                store.down()
            bed.down()


if __name__ == "__main__":
    main()
