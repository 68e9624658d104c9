"""The agent container against its baselines, measured in one run on one engine and one object store.

    make bench            (or: .venv/bin/python bench/agent_container.py [--starts 10] [--sizes 1,50,500])

Figures (one JSON line each; medians and p90 of the runs):
  start_to_readyz_s         `docker run` of a new agent (fresh tenant, empty DB) to its first 200 on /readyz
  baseline_start_to_http_s  `docker run` of the same base image serving `python3 -m http.server` to its first answer
  first_replica_s           container start to the first LTX file of its replica in object storage (sync 1 s)
  idle_memory_mib           one ready, idle agent container, all-in (cgroup usage minus page cache: `docker stats`)
  restore_start_s[size]     a generation-2 container restoring an N MB replica (integrity check quick) to /readyz
  bare_restore_s[size]      `litestream restore -integrity-check quick` of the same replica on the host
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import apsw  # noqa: E402
import docker  # noqa: E402
import httpx  # noqa: E402

from agent_image import Store  # noqa: E402
from agent_image.container import litestream  # noqa: E402
from control_plane.drivers.agent_spec import AgentSpec, run_agent, wait_ready  # noqa: E402
from control_plane.drivers.host_address import local_host_address  # noqa: E402
from control_plane.drivers.images import DEFAULT_BASE, build_agent_image  # noqa: E402
from control_plane.storage import ObjectStorage, SeaweedCredentials  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402

BUCKET = "litefleet-bench"


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"metric": name, **fields}), flush=True)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 3),
        "n": len(ordered),
    }


class Bench:
    def __init__(self, client: Any, image: str, store: EmbeddedStore) -> None:
        self.client, self.image, self.store = client, image, store
        self.storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
        self.storage.ensure_bucket()
        self.credentials = SeaweedCredentials(store, self.storage)
        self.containers: list[Any] = []
        self.volumes: list[str] = []

    def spec(self, tenant: str, generation: int, restore_from: int | None = None) -> AgentSpec:
        return AgentSpec(
            tenant=tenant,
            agent=0,
            generation=generation,
            bundle="tenants.hello",
            image=self.image,
            replica_url=self.storage.replica_url(tenant, 0, generation),
            restore_from_url=None if restore_from is None else self.storage.replica_url(tenant, 0, restore_from),
            s3_endpoint=self.store.address.endpoint,
            credentials=self.credentials.issue(tenant),
            agent_token=secrets.token_urlsafe(32),
            admin_token=secrets.token_urlsafe(32),
            memory_mb=1024,
        )

    def start(self, spec: AgentSpec) -> tuple[Any, float]:
        self.storage.advance_current(spec.tenant, 0, spec.generation, self.storage.read_current(spec.tenant, 0))
        started = time.monotonic()
        container = run_agent(self.client, spec)  # creates, starts, delivers the secrets (as the control plane)
        self.containers.append(container)
        self.volumes.append(spec.volume)
        wait_ready(container, spec.agent_token, timeout=600)
        return container, time.monotonic() - started

    def cleanup(self) -> None:
        for container in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for volume in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(volume).remove(force=True)


def measure_starts(bench: Bench, starts: int) -> None:
    to_ready, to_replica, memory = [], [], []
    for _ in range(starts):
        tenant = "b" + secrets.token_hex(4)
        spec = bench.spec(tenant, 1)
        container, seconds = bench.start(spec)
        to_ready.append(seconds)
        prefix = bench.storage.replica_prefix(tenant, 0, 1)
        began = time.monotonic() - seconds
        while not any(key.endswith(".ltx") for key in bench.storage.keys(prefix)):
            if time.monotonic() - began > 120:
                raise RuntimeError(f"no replica under {prefix} after 120 s")
            time.sleep(0.02)
        to_replica.append(time.monotonic() - began)
        memory.append(container)
    emit("start_to_readyz_s", **summary(to_ready))
    emit("first_replica_s", **summary(to_replica))
    time.sleep(10)  # idle: recovery done, first syncs done, Python and Go settled
    usage = []
    for container in memory:
        stats = container.stats(stream=False)["memory_stats"]
        usage.append((stats["usage"] - stats.get("stats", {}).get("cache", 0)) / 2**20)
    emit("idle_memory_mib", **summary(usage), target_mib=64)
    for container in memory:
        container.remove(force=True)


def measure_baseline(client: Any, starts: int) -> None:
    times = []
    for _ in range(starts):
        started = time.monotonic()
        container = client.containers.run(
            DEFAULT_BASE,
            ["python3", "-m", "http.server", "8000"],
            detach=True,
            ports={"8000/tcp": ("127.0.0.1", None)},
        )
        try:
            container.reload()
            port = container.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
            with httpx.Client(timeout=1) as poller:  # one client: a new one per poll costs ~50 ms of CPU
                while True:
                    try:
                        poller.get(f"http://127.0.0.1:{port}/")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.01)
            times.append(time.monotonic() - started)
        finally:
            container.remove(force=True)
    emit("baseline_start_to_http_s", **summary(times))


def replicated_database(
    storage: ObjectStorage, admin: tuple[str, str], tenant: str, megabytes: int, scratch: Path
) -> None:
    """Make an agent database of `megabytes` (runtime schema + incompressible filler) and replicate it as
    generation 1 of `tenant`'s agent 0, waiting until the replica holds all of it (the local files are removed)."""
    db = scratch / f"{tenant}.db"
    Store(str(db)).close()
    connection = apsw.Connection(str(db))
    connection.execute("CREATE TABLE bench_filler (blob BLOB)")
    with connection:
        for _ in range(megabytes * 256):
            connection.execute("INSERT INTO bench_filler VALUES (randomblob(4000))")
    connection.close()
    socket_path = scratch / f"{tenant}.sock"
    document = litestream.config(
        db, storage.replica_url(tenant, 0, 1), storage.endpoint, socket_path=socket_path, credentials=admin
    )
    config = litestream.write_config(document, scratch / f"{tenant}.json")
    process = subprocess.Popen(
        [litestream.binary(), "replicate", "-config", str(config)],
        env=litestream.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                if litestream.sync_wait(socket_path, db, timeout=300).caught_up:
                    break
            except litestream.LitestreamError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(60)
    for leftover in scratch.glob(f"{tenant}.db*"):
        if leftover.is_file():
            leftover.unlink()


def measure_restores(bench: Bench, sizes: list[int], repeat: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("LITEFLEET_BENCH_DIR")) as scratch_dir:
        scratch = Path(scratch_dir)
        for megabytes in sizes:
            tenant = f"r{megabytes}-" + secrets.token_hex(3)
            bench.storage.advance_current(tenant, 0, 1, None)
            replicated_database(bench.storage, bench.store.admin, tenant, megabytes, scratch)
            bare, full = [], []
            for attempt in range(repeat):
                out = scratch / f"bare-{attempt}.db"
                started = time.monotonic()
                bench.storage.restore(bench.storage.replica_url(tenant, 0, 1), out, integrity_check="quick")
                bare.append(time.monotonic() - started)
                for leftover in scratch.glob("bare-*"):
                    leftover.unlink()
                container, seconds = bench.start(bench.spec(tenant, 2 + attempt, restore_from=1))
                full.append(seconds)
                container.remove(force=True)
            ratio = statistics.median(full) / statistics.median(bare)
            emit("restore_start_s", size_mb=megabytes, **summary(full))
            emit("bare_restore_s", size_mb=megabytes, **summary(bare), ratio=round(ratio, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--sizes", default="1,50,500")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    client = docker.from_env(timeout=600)
    built = build_agent_image(client)
    emit("image", tag=built.tag, size_mib=round(built.size_bytes / 2**20), build_s=built.seconds, built=built.built)
    address = free_address(local_host_address())
    with tempfile.TemporaryDirectory() as store_dir:
        store = EmbeddedStore(Path(store_dir), address, BUCKET, "BENCHADMIN", secrets.token_hex(16))
        store.up()
        bench = Bench(client, built.tag, store)
        try:
            measure: list[Callable[[], None]] = [
                lambda: measure_baseline(client, args.starts),
                lambda: measure_starts(bench, args.starts),
                lambda: measure_restores(bench, [int(size) for size in args.sizes.split(",")], args.repeat),
            ]
            for step in measure:
                step()
        finally:
            bench.cleanup()
            store.down()


if __name__ == "__main__":
    main()
