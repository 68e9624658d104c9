"""The warm pool on the namespaced test bed, through the API of a control plane with LITEFLEET_WARM_POOL_SIZE=1:
each node gets a ready pool container, a provision claims them (the operation says so), the claimed agents run on
their tenant's own network (not the default bridge) without a secret or another tenant's identity in their
environment, serve workflows through the router, and the pools refill behind them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.drivers import DockerDriver
from control_plane.drivers.network import TenantNetwork
from control_plane.storage.seaweed import EmbeddedStore
from control_plane.timing import poll
from infra.testbed import Testbed
from tests.e2e.conftest import ControlPlane, tenant_name


@pytest.fixture
def pooled_plane(testbed: Testbed, store: EmbeddedStore, image: str, tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane.beside(
        store, image, tmp_path, pki_dir=str(testbed.pki_dir), warm_pool_size="1", warm_pool_interval="0.5"
    )
    plane.start(timeout=120)
    try:
        for node in testbed.nodes:
            plane.register(node.name, node.engine_url, node.ip, tls=node.tls_name)
        yield plane
    finally:
        plane.stop()
        for node in testbed.nodes:
            driver = DockerDriver(node.engine_url, tls=node.tls)
            for member in driver.list_pool(store.bucket):
                driver.remove(member.name)


def pools_ready(plane: ControlPlane, want: int = 1, timeout: float = 120) -> None:
    nodes: list[dict[str, object]] = []
    for _ in poll(timeout, 0.25):
        nodes = plane.call("GET", "/v1/nodes").json()["items"]
        if all(node["pool_ready"] == want and node["pool_size"] == 1 for node in nodes):
            return
    raise AssertionError(f"pools not ready: {[(n['name'], n['pool_ready'], n['pool_size']) for n in nodes]}")


def test_a_provision_claims_warm_containers_that_run_isolated_and_the_pools_refill(
    pooled_plane: ControlPlane, testbed: Testbed, store: EmbeddedStore
) -> None:
    plane = pooled_plane
    pools_ready(plane)
    for node in testbed.nodes:  # an unclaimed pool container has no network at all
        for member in node.client().containers.list(filters={"label": "io.litefleet.pool=true"}):
            assert not member.attrs["NetworkSettings"]["Networks"]
    tenant = tenant_name()
    op = plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2})
    assert [s["step"] for s in op["steps"]].count("agent.claimed") == 2, op["steps"]
    secrets = {row["ordinal"]: row for row in plane.agent_secrets(tenant)}
    network = TenantNetwork(store.bucket, tenant).name
    for node in testbed.nodes:
        for container in node.client().containers.list(filters={"name": f"lf-{tenant}-"}):
            assert set(container.attrs["NetworkSettings"]["Networks"]) == {network}  # no default bridge left
            environment = " ".join(container.attrs["Config"]["Env"])
            assert "LITEFLEET_POOLED=1" in environment and "LITEFLEET_TENANT" not in environment
            row = secrets[int(container.name.split("-")[-2])]
            assert row["secret_key"] not in environment and row["agent_token"] not in environment
    answer = plane.call("POST", f"/v1/tenants/{tenant}/workflows/count", json={"args": [1]}, timeout=60)
    assert answer.status_code in (200, 201), answer.text
    pools_ready(plane)  # refilled behind the claims
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})
    for node in testbed.nodes:
        assert node.client().containers.list(all=True, filters={"name": f"lf-{tenant}-"}) == []
        pool = {c.name for c in node.client().containers.list(all=True, filters={"label": "io.litefleet.pool=true"})}
        volumes = {v.name for v in node.client().volumes.list() if v.name.startswith("lfwarm-")}
        assert volumes == pool  # the claimed containers' pool-named volumes went with them
