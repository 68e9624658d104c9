"""One agent under runc and under runsc (gVisor), measured in the same run on the same namespaced node engine
(needs root: a one-node test bed whose engine registers runsc, as infra/testbed.py does).

    make bench            (or: .venv/bin/python bench/runtimes.py [--starts 5] [--steps 2000] [--workflows 50])

Rounds alternate runc and runsc, so drift on a shared machine hits both alike. Figures (one JSON line each; p50/p90
of the runs, and the runsc/runc ratio of the medians):
  start_to_readyz_s   `run_agent` (create, start, secrets) of a fresh agent to /readyz 200 and its first replica
  idle_memory_mib     one ready, idle agent after 10 s: rss + shmem of its cgroup (memory.stat). Not usage minus
                      cache: gVisor's guest memory is shared memory, which counts as cache
  steps_per_s         one `count(--steps)` workflow (each step a checkpointed SQLite commit), start to result
  workflows_per_s     --workflows `count(1)` started one after another, each acknowledged once replicated
                      (sync interval 0.1 s) and waited for its result
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
import httpx  # noqa: E402

from control_plane.drivers import DockerDriver  # noqa: E402
from control_plane.drivers.agent_http import bearer, wait_ready  # noqa: E402
from control_plane.drivers.agent_spec import AgentSpec, agent_url, run_agent  # noqa: E402
from control_plane.drivers.images import build_agent_image  # noqa: E402
from control_plane.storage import ObjectStorage, SeaweedCredentials  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402
from infra.testbed import Testbed, TestbedNode  # noqa: E402

BUCKET = "litefleet-bench"
RUNTIMES = ("runc", "runsc")


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return {"p50": round(statistics.median(ordered), 3), "p90": round(p90, 3), "n": len(ordered)}


def emit(name: str, by_runtime: dict[str, list[float]], **fields: Any) -> None:
    for runtime, values in by_runtime.items():
        print(json.dumps({"metric": name, "runtime": runtime, **summary(values), **fields}), flush=True)
    ratio = statistics.median(by_runtime["runsc"]) / statistics.median(by_runtime["runc"])
    print(json.dumps({"metric": name, "ratio_runsc_to_runc": round(ratio, 2)}), flush=True)


class Agents:
    def __init__(self, store: EmbeddedStore, image: str, node: TestbedNode) -> None:
        self.store, self.image, self.node = store, image, node
        self.client = node.client(timeout=300)
        self.storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
        self.storage.ensure_bucket()
        self.credentials = SeaweedCredentials(store, self.storage)
        self.started: list[Any] = []

    def start(self, runtime: str) -> tuple[Any, AgentSpec, float]:
        """A fresh agent under `runtime`, ready and replicating; returns it, its spec and the seconds it took."""
        tenant = ("g" if runtime == "runsc" else "r") + secrets.token_hex(4)
        spec = AgentSpec(
            tenant=tenant, agent=0, generation=1, bundle="tenants.hello", image=self.image,
            replica_url=self.storage.replica_url(tenant, 0, 1), s3_endpoint=self.store.address.endpoint,
            credentials=self.credentials.issue_incarnation(tenant, 0, 1), agent_token=secrets.token_urlsafe(32),
            admin_token=secrets.token_urlsafe(32), publish_ip=self.node.ip, runtime=runtime, memory_mb=512,
            sync_interval=0.1, monitor_interval=0.1,
        )  # fmt: skip
        self.storage.advance_current(tenant, 0, 1, None)
        started = time.monotonic()
        container = run_agent(self.client, spec)
        self.started.append(container)
        url = agent_url(container)
        wait_ready(lambda: url, token=spec.agent_token, timeout=300, replicated=True, interval=0.02)
        return container, spec, time.monotonic() - started

    def cleanup(self) -> None:
        for container in self.started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(container.name).remove(force=True)


def rss_and_shmem_mib(container: Any, node: TestbedNode) -> float:
    """rss + shmem of the container's cgroup, read from the cgroup itself: the engine is on this machine, and
    Docker's stats leave `shmem` out under cgroup v1 (where gVisor's guest memory is)."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")):  # v2, v1
        stat = root / node.name / container.id / "memory.stat"
        if stat.exists():
            values = {key: int(value) for key, value in (line.split() for line in stat.read_text().splitlines())}
            return (values.get("anon", values.get("rss", 0)) + values.get("shmem", 0)) / 2**20
    raise SystemExit(f"no memory.stat for {container.name} under /sys/fs/cgroup[/memory]/{node.name}")


def throughput(container: Any, spec: AgentSpec, steps: int, workflows: int) -> tuple[float, float]:
    """(steps/s of one long workflow, workflows/s of short ones started one after another)."""
    url = agent_url(container)
    with httpx.Client(base_url=str(url), headers=bearer(spec.agent_token), timeout=300) as agent:
        started = time.monotonic()
        answer = agent.post("/v1/workflows/count", params={"wait": 300}, json={"id": "long", "args": [steps]})
        assert answer.json()["status"] == "SUCCESS", answer.text
        steps_per_s = steps / (time.monotonic() - started)
        started = time.monotonic()
        for index in range(workflows):
            answer = agent.post("/v1/workflows/count", params={"wait": 60}, json={"id": f"w{index}", "args": [1]})
            assert answer.json()["status"] == "SUCCESS", answer.text
        return steps_per_s, workflows / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workflows", type=int, default=50)
    args = parser.parse_args()
    image = build_agent_image(docker.from_env()).tag
    prefix = os.environ.get("LITEFLEET_BENCH_PREFIX", "lfr")  # its own names and subnet, beside any test bed
    subnet = os.environ.get("LITEFLEET_BENCH_SUBNET", "10.94.0")
    with tempfile.TemporaryDirectory() as scratch:
        bed = Testbed(Path(scratch) / "bed", prefix=prefix, subnet=subnet)
        store: EmbeddedStore | None = None
        agents: Agents | None = None
        try:
            node = bed.up(1)[0]
            runtimes = DockerDriver(node.engine_url, tls=node.tls).runtimes()
            if "runsc" not in runtimes:
                raise SystemExit(f"the test bed's engine offers {runtimes}: install runsc (infra/setup-host.sh)")
            DockerDriver(node.engine_url, tls=node.tls).ensure_image(image)  # outside the measurements
            store = EmbeddedStore(Path(scratch) / "store", free_address(bed.gateway), BUCKET, "BENCH", "b" * 32)
            store.up()
            agents = Agents(store, image, node)
            starts: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
            idle: dict[str, list[Any]] = {runtime: [] for runtime in RUNTIMES}
            for _ in range(args.starts):
                for runtime in RUNTIMES:
                    container, spec, seconds = agents.start(runtime)
                    starts[runtime].append(seconds)
                    idle[runtime].append((container, spec))
            emit("start_to_readyz_s", starts)
            time.sleep(10)  # idle: recovery done, first syncs done, Python and Go settled
            emit("idle_memory_mib", {rt: [rss_and_shmem_mib(c, node) for c, _ in idle[rt]] for rt in RUNTIMES})
            steps: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
            workflows: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
            for round_ in range(min(3, args.starts)):
                for runtime in RUNTIMES:
                    container, spec = idle[runtime][round_]
                    per_step, per_workflow = throughput(container, spec, args.steps, args.workflows)
                    steps[runtime].append(per_step)
                    workflows[runtime].append(per_workflow)
            emit("steps_per_s", steps, steps=args.steps)
            emit("workflows_per_s", workflows, workflows=args.workflows)
        finally:
            if agents is not None:
                agents.cleanup()
            if store is not None:
                store.down()
            bed.down()


if __name__ == "__main__":
    main()
