"""A real fleet for end-to-end tests: two node engines in network namespaces, SeaweedFS on their bridge, the
agent image on both, and the control plane as a subprocess (so tests can kill -9 it).

The fleet DB is SQLite in a temp dir, or PostgreSQL when LITEFLEET_TEST_DATABASE_URL is set (CI runs both)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from control_plane.cli.local import ControlPlaneProcess
from control_plane.drivers import DockerDriver
from control_plane.drivers.host_address import host_address
from control_plane.drivers.images import build_agent_image
from control_plane.storage import ObjectStorage
from control_plane.storage.seaweed import EmbeddedStore, free_address
from infra.testbed import Testbed, TestbedNode

BUCKET = "litefleet-e2e"


def _require(reason: str) -> None:
    if os.environ.get("LITEFLEET_REQUIRE_DOCKER") == "1":
        pytest.fail(f"LITEFLEET_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    if os.geteuid() != 0:
        _require("the e2e test bed needs root (network namespaces, dockerd)")
    try:
        docker.from_env().ping()
    except Exception as exc:
        _require(f"no local Docker engine: {exc}")
    # its own names and subnet, so a demo's test bed (lf, 10.99.0) can keep running beside it; two e2e runs at
    # once each need their own (LITEFLEET_E2E_PREFIX, LITEFLEET_E2E_SUBNET)
    prefix = os.environ.get("LITEFLEET_E2E_PREFIX", "lft")
    subnet = os.environ.get("LITEFLEET_E2E_SUBNET", "10.98.0")
    state_dir = Path(f"/var/lib/litefleet-testbed-{secrets.token_hex(3)}")
    bed = Testbed(state_dir, prefix=prefix, subnet=subnet)
    try:
        bed.up(2)
        yield bed
    finally:
        bed.down()
        with contextlib.suppress(OSError):  # empty once down; anything left there is kept to look at
            state_dir.rmdir()


@pytest.fixture(scope="session")
def image() -> str:
    return build_agent_image(docker.from_env()).tag


@pytest.fixture(scope="session")
def store(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    # where the nodes' containers reach this host: the test bed's bridge address, found as litefleet finds it
    addresses = {host_address(node.engine_url) for node in testbed.nodes}
    assert addresses == {testbed.gateway}, f"nodes reach this host at {addresses}, expected {testbed.gateway}"
    embedded = EmbeddedStore(
        tmp_path_factory.mktemp("e2e-store"), free_address(testbed.gateway), BUCKET, "E2EADMIN", secrets.token_hex(16)
    )
    embedded.up()
    yield embedded
    embedded.down()


class ControlPlane(ControlPlaneProcess):
    """The control plane as a subprocess on its own port and state dir, plus API helpers."""

    # -- API helpers ------------------------------------------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.send(method, path, timeout=kwargs.pop("timeout", 600), **kwargs)

    def done(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Run a long action with ?wait=true and insist it succeeded."""
        op = self.client.wait(method, path, json_body=kwargs.get("json"), **kwargs.get("params", {}))
        assert op["state"] == "succeeded", f"{op['kind']} failed: {op['error']}\n{op['steps']}"
        return op

    def agent_secrets(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's agent rows' secrets as the fleet DB holds them (the API never shows them): per agent its
        `ordinal`, `url`, `agent_token`, `admin_token`, `access_key`, `secret_key`, and the tenant's admin token."""
        import sqlalchemy

        url = self.env.get("LITEFLEET_DATABASE_URL") or f"sqlite:///{self.env['LITEFLEET_STATE_DIR']}/fleet.db"
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sqlalchemy.text(
                        "SELECT a.ordinal, a.url, a.agent_token, a.admin_token, a.access_key, a.secret_key,"
                        " t.admin_token AS tenant_admin_token FROM agent a JOIN tenant t ON t.name = a.tenant"
                        " WHERE a.tenant = :tenant ORDER BY a.ordinal"
                    ),
                    {"tenant": tenant},
                )
                return [dict(row._mapping) for row in rows]
        finally:
            engine.dispose()

    def agent_token(self, tenant: str, ordinal: int) -> str:
        token: str = next(r for r in self.agent_secrets(tenant) if r["ordinal"] == ordinal)["agent_token"]
        return token

    def wait_op(self, op_id: str, timeout: float = 600) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/operations/{op_id}", params={"wait": "true", "timeout": timeout})
        op: dict[str, Any] = answer.json()
        return op


@pytest.fixture(scope="session")
def control_plane(
    testbed: Testbed, store: EmbeddedStore, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    database = os.environ.get("LITEFLEET_TEST_DATABASE_URL")
    plane = ControlPlane.beside(
        store,
        image,
        tmp_path_factory.mktemp("control-plane"),
        pki_dir=str(testbed.pki_dir),  # the test bed's CA: its client credential set reaches the engines
        drain_timeout="5",
        lease_seconds="4",
        heartbeat_interval="2",
        fence_interval="2",  # agents read CURRENT every 2 s; a fail-over waits out their 6 s lease (+1 s)
        agent_lease_timeout="6",
        preflight_timeout="2",
        # a move's downtime here reached 16.5 s under load (15 s default): routed requests are held through it
        hold_timeout="45",  # a frozen store is refused in ~2 s, inside the agents' lease (they keep serving)
        # a healthy agent's store-confirmed lag is up to its 5 s probe + a 2 s heartbeat + a 2 s sample
        replication_lagging_after="15",
        replication_stalled_after="25",
        **({"database_url": _own_schema(database)} if database else {}),
    )
    plane.start(timeout=120)  # a busy shared machine took >30 s to import and migrate
    for node in testbed.nodes:
        plane.register(node.name, node.engine_url, node.ip, tls=node.tls_name)
    yield plane
    plane.stop()


def _own_schema(url: str) -> str:
    """A fresh `e2e` schema, so the control plane under test never sees the unit tests' rows (or they its)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA IF EXISTS e2e CASCADE; CREATE SCHEMA e2e"))
    engine.dispose()
    return url + ("&" if "?" in url else "?") + "options=-csearch_path%3De2e"


@pytest.fixture(scope="session")
def admin(store: EmbeddedStore) -> ObjectStorage:
    return ObjectStorage(store.address.endpoint, *store.admin, BUCKET)


def managed_containers(nodes: list[TestbedNode]) -> dict[str, list[str]]:
    """Every litefleet container on every node engine, running or not: {node: [names]}."""
    return {
        node.name: sorted(i.name for i in DockerDriver(node.engine_url, tls=node.tls).list_managed()) for node in nodes
    }


def tenant_name() -> str:
    return "e" + secrets.token_hex(4)


@contextmanager
def frozen(store: EmbeddedStore) -> Iterator[list[int]]:
    """SIGSTOP the store's processes (weed mini and the S3 gateway, by the pids the fixture recorded); SIGCONT
    them on the way out, whatever happened."""
    pids = [int(path.read_text()) for path in (store.pid_file, store.s3_pid_file)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
