"""What `?durability=replicated` costs: one real agent container, one object store, the same workflow started with
each durability mode, measured in one run.

    make bench            (or: .venv/bin/python bench/durability.py [--starts 40] [--in-flight 16])

Figures (one JSON line each; medians and p90):
  start_latency_s[local]       POST /v1/workflows/greet answered after the local commit (the default)
  start_latency_s[replicated]  the same call answered only once the replica in object storage holds the start
  throughput_wf_s[mode]        starts per second with `--in-flight` concurrent clients
The ratio replicated/local is the price of RPO 0 for a call. It is bounded below by one `litestream sync -wait`
round trip to the store (upload of the new LTX file) and does not depend on the sync interval.
"""

from __future__ import annotations

import argparse
import concurrent.futures
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
import httpx  # noqa: E402

from control_plane.drivers.agent_spec import AgentSpec, agent_url, run_agent, wait_ready  # noqa: E402
from control_plane.drivers.host_address import local_host_address  # noqa: E402
from control_plane.drivers.images import build_agent_image  # noqa: E402
from control_plane.storage import ObjectStorage, SeaweedCredentials  # noqa: E402
from control_plane.storage.seaweed import EmbeddedStore, free_address  # noqa: E402

BUCKET = "litefleet-bench-durability"
MODES = ("local", "replicated")


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"metric": name, **fields}), flush=True)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 4),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 4),
        "n": len(ordered),
    }


def start_one(client: httpx.Client, mode: str) -> float:
    started = time.monotonic()
    answer = client.post("/v1/workflows/greet", params={"durability": mode}, json={"args": ["ada"]})
    if answer.status_code != 201:
        raise RuntimeError(f"start with durability={mode} answered {answer.status_code}: {answer.text[:200]}")
    return time.monotonic() - started


def measure(client: httpx.Client, starts: int, in_flight: int) -> None:
    for mode in MODES:  # warm up both paths (first sync, connection, imports)
        start_one(client, mode)
    latency: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(starts):  # interleaved, so drift on a noisy machine hits both modes alike
        for mode in MODES:
            latency[mode].append(start_one(client, mode))
    for mode in MODES:
        emit("start_latency_s", mode=mode, **summary(latency[mode]))
    emit(
        "replicated_over_local",
        p50_ratio=round(statistics.median(latency["replicated"]) / statistics.median(latency["local"]), 1),
    )
    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        for mode in MODES:
            began = time.monotonic()
            list(pool.map(start_one, [client] * starts * 2, [mode] * starts * 2))
            rate = starts * 2 / (time.monotonic() - began)
            emit("throughput_wf_s", mode=mode, in_flight=in_flight, value=round(rate, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=40)
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args()
    engine = docker.from_env(timeout=600)
    image = build_agent_image(engine).tag
    address = free_address(local_host_address())
    with tempfile.TemporaryDirectory() as store_dir:
        store = EmbeddedStore(Path(store_dir), address, BUCKET, "BENCHADMIN", secrets.token_hex(16))
        store.up()
        container = None
        try:
            storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
            storage.ensure_bucket()
            tenant = "d" + secrets.token_hex(4)
            spec = AgentSpec(
                tenant=tenant,
                agent=0,
                generation=1,
                bundle="tenants.hello",
                image=image,
                replica_url=storage.replica_url(tenant, 0, 1),
                s3_endpoint=store.address.endpoint,
                credentials=SeaweedCredentials(store, storage).issue(tenant),
                agent_token=secrets.token_urlsafe(32),
                admin_token=secrets.token_urlsafe(32),
                memory_mb=1024,
            )
            storage.advance_current(tenant, 0, 1, storage.read_current(tenant, 0))
            container = run_agent(engine, spec)
            wait_ready(container, spec.agent_token, timeout=600)
            url = agent_url(container)
            assert url is not None
            headers = {"Authorization": f"Bearer {spec.agent_token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                measure(client, args.starts, args.in_flight)
        finally:
            if container is not None:
                container.remove(force=True)
                engine.volumes.get(spec.volume).remove(force=True)
            store.down()


if __name__ == "__main__":
    main()
