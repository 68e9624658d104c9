"""What tenant network isolation costs on a node, against its baselines, measured in one run on one node engine.

    .venv/bin/python bench/network_isolation.py [--tenants 10] [--prefix lfb --subnet 10.93.0]   (root)

It starts a one-node test bed of its own (a namespaced engine, so the rules never touch this host's iptables) and
removes it at the end. Figures (one JSON line each; medians and p90):
  helper_build_s           building the helper image on the local engine (0 when it was there)
  helper_copy_s            copying it to a fresh node (once per node)
  ensure_new_s             a new tenant on the node: its network created and its rules installed
  ensure_again_s           the same for a tenant already there (what every agent start pays)
  release_s                the tenant's last container gone: network and rules removed
  baseline_helper_run_s    `docker run` of the helper image doing nothing (`true`): the floor of one rule change
  baseline_network_s       creating and removing a bridge network alone (no rules)
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import docker  # noqa: E402

from control_plane.drivers.docker import DockerDriver  # noqa: E402
from control_plane.drivers.network import (  # noqa: E402
    TenantNetwork,
    build_helper_image,
    ensure_tenant_network,
    release_tenant_network,
    tenant_isolation,
)
from infra.testbed import Testbed  # noqa: E402


def emit(name: str, **fields: Any) -> None:
    print(json.dumps({"figure": name, **fields}), flush=True)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "n": len(ordered),
    }


def timed(action: Any) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--prefix", default="lfb")
    parser.add_argument("--subnet", default="10.93.0")
    args = parser.parse_args()
    bed = Testbed(Path(tempfile.mkdtemp(prefix="litefleet-bench-net-")), prefix=args.prefix, subnet=args.subnet)
    try:
        (node,) = bed.up(1)
        started = time.monotonic()
        tag = build_helper_image(docker.from_env(timeout=600))
        emit("helper_build_s", seconds=round(time.monotonic() - started, 2))
        driver = DockerDriver(node.engine_url, tls=node.tls)
        emit("helper_copy_s", seconds=driver.ensure_image(tag))
        client = driver.client
        isolation = tenant_isolation(f"http://{bed.gateway}:8333", node.ip)
        run = secrets.token_hex(2)
        networks = [TenantNetwork("bench", f"t{run}{i}") for i in range(args.tenants)]
        new = [timed(lambda n=n: ensure_tenant_network(client, n, isolation, tag)) for n in networks]
        again = [timed(lambda n=n: ensure_tenant_network(client, n, isolation, tag)) for n in networks]
        release = [timed(lambda n=n: release_tenant_network(client, n, tag)) for n in networks]
        floor = [timed(lambda: client.containers.run(tag, ["true"], remove=True)) for _ in networks]

        def bare_network(i: int) -> None:
            client.networks.create(f"lfbench-{run}-{i}", driver="bridge").remove()

        bare = [timed(lambda i=i: bare_network(i)) for i in range(args.tenants)]
        for name, values in (
            ("ensure_new_s", new),
            ("ensure_again_s", again),
            ("release_s", release),
            ("baseline_helper_run_s", floor),
            ("baseline_network_s", bare),
        ):
            emit(name, **summary(values))
        emit(
            "ratios",
            ensure_again_vs_helper_run=round(statistics.median(again) / statistics.median(floor), 2),
            ensure_new_vs_network_alone=round(statistics.median(new) / statistics.median(bare), 2),
        )
    finally:
        bed.down()
        shutil.rmtree(bed.state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
