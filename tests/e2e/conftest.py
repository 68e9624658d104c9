"""A real fleet for end-to-end tests: two node engines in network namespaces, SeaweedFS on their bridge, the
agent image on both, and the control plane as a subprocess (so tests can kill -9 it).

The fleet DB is SQLite in a temp dir, or PostgreSQL when LITEFLEET_TEST_DATABASE_URL is set (CI runs both)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from control_plane.drivers import DockerDriver
from control_plane.images import build_agent_image
from control_plane.objectstore import EmbeddedStore, free_address
from control_plane.storage import ObjectStorage
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
    # its own names and subnet, so a demo's test bed (lf, 10.99.0) can keep running beside it
    bed = Testbed(Path(f"/var/lib/litefleet-testbed-{secrets.token_hex(3)}"), prefix="lft", subnet="10.98.0")
    try:
        bed.up(2)
        yield bed
    finally:
        bed.down()


@pytest.fixture(scope="session")
def image() -> str:
    return build_agent_image(docker.from_env()).tag


@pytest.fixture(scope="session")
def store(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    embedded = EmbeddedStore(
        tmp_path_factory.mktemp("e2e-store"), free_address(testbed.gateway), BUCKET, "E2EADMIN", secrets.token_hex(16)
    )
    embedded.up()
    yield embedded
    embedded.down()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ControlPlane:
    """The control plane as a subprocess on its own port and state dir."""

    env: dict[str, str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"control plane did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    # -- API helpers ------------------------------------------------------------------------------------------------

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=kwargs.pop("timeout", 600), **kwargs)

    def done(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Run a long action with ?wait=true and insist it succeeded."""
        params = {**kwargs.pop("params", {}), "wait": "true", "timeout": 600}
        answer = self.call(method, path, params=params, **kwargs)
        assert answer.status_code in (200, 202), answer.text
        op: dict[str, Any] = answer.json()
        assert op["state"] == "succeeded", f"{op['kind']} failed: {op['error']}\n{op['steps']}"
        return op

    def wait_op(self, op_id: str, timeout: float = 600) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/operations/{op_id}", params={"wait": "true", "timeout": timeout})
        op: dict[str, Any] = answer.json()
        return op


@pytest.fixture(scope="session")
def control_plane(
    testbed: Testbed, store: EmbeddedStore, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    state = tmp_path_factory.mktemp("control-plane")
    port = _free_port()
    address = store.address
    env = {
        **os.environ,
        "LITEFLEET_STATE_DIR": str(state),
        "LITEFLEET_STORE_IP": address.ip,
        "LITEFLEET_STORE_S3_PORT": str(address.s3_port),
        "LITEFLEET_STORE_MASTER_PORT": str(address.master_port),
        "LITEFLEET_STORE_VOLUME_PORT": str(address.volume_port),
        "LITEFLEET_STORE_FILER_PORT": str(address.filer_port),
        "LITEFLEET_BUCKET": BUCKET,
        "LITEFLEET_S3_ADMIN_KEY": store._admin[0],
        "LITEFLEET_S3_ADMIN_SECRET": store._admin[1],
        "LITEFLEET_API_PORT": str(port),
        "LITEFLEET_IMAGE": image,
        "LITEFLEET_DRAIN_TIMEOUT": "5",
        "LITEFLEET_LEASE_SECONDS": "4",
        "LITEFLEET_HEARTBEAT_INTERVAL": "2",
    }
    database = os.environ.get("LITEFLEET_TEST_DATABASE_URL")
    if database:
        env["LITEFLEET_DATABASE_URL"] = _own_schema(database)
    plane = ControlPlane(env, f"http://127.0.0.1:{port}", state / "control-plane.log")
    plane.start()
    for node in testbed.nodes:
        answer = plane.call(
            "POST", "/v1/nodes", json={"name": node.name, "engine_url": node.engine_url, "address": node.ip}
        )
        assert answer.status_code == 201, answer.text
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
    return ObjectStorage(store.address.endpoint, *store._admin, BUCKET)


def managed_containers(nodes: list[TestbedNode]) -> dict[str, list[str]]:
    """Every litefleet container on every node engine, running or not: {node: [names]}."""
    return {node.name: sorted(i.name for i in DockerDriver(node.engine_url).list_managed()) for node in nodes}


def tenant_name() -> str:
    return "e" + secrets.token_hex(4)
