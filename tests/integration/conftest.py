"""Real parts for integration tests: SeaweedFS, the Docker engine, the agent image.

Docker tests fail (not skip) when LITEFLEET_REQUIRE_DOCKER=1 and no engine answers: CI must never pass by
skipping them."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from control_plane.drivers.agent_http import bearer
from control_plane.drivers.agent_spec import AgentSpec, run_agent, wait_ready
from control_plane.drivers.host_address import local_host_address
from control_plane.drivers.images import build_agent_image
from control_plane.storage import ObjectStorage, SeaweedCredentials
from control_plane.storage.seaweed import EmbeddedStore, free_address
from control_plane.timing import poll

BUCKET = "litefleet"


def start_store(directory: Path, ip: str) -> EmbeddedStore:
    embedded = EmbeddedStore(directory, free_address(ip), BUCKET, "ADMINKEY", secrets.token_hex(16))
    embedded.up()
    return embedded


def admin_storage(store: EmbeddedStore) -> ObjectStorage:
    storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
    storage.ensure_bucket()
    return storage


@pytest.fixture(scope="session")
def docker_client() -> Any:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        if os.environ.get("LITEFLEET_REQUIRE_DOCKER") == "1":
            pytest.fail(f"LITEFLEET_REQUIRE_DOCKER=1 but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return client


@pytest.fixture(scope="session")
def bridge_store(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    """SeaweedFS bound to the engine's bridge gateway, where containers (and the host) reach it."""
    store = start_store(tmp_path_factory.mktemp("bridge-store"), local_host_address())
    yield store
    store.down()


@pytest.fixture(scope="session")
def agent_image(docker_client: Any) -> str:
    return build_agent_image(docker_client).tag


@dataclass
class Agents:
    """Starts agent incarnations the way the control plane does (`run_agent`: the contract's env, the tmpfs, the
    secrets delivered by `docker exec` + stdin), and removes everything it started."""

    client: Any
    image: str
    store: EmbeddedStore
    storage: ObjectStorage
    credentials: SeaweedCredentials
    started: list[Any] = field(default_factory=list)
    volumes: set[str] = field(default_factory=set)
    specs: dict[str, AgentSpec] = field(default_factory=dict)  # container name -> its spec (and so its secrets)

    def tenant(self) -> str:
        return "t" + secrets.token_hex(4)

    def spec(self, tenant: str, generation: int, restore_from: int | None = None, **overrides: Any) -> AgentSpec:
        values: dict[str, Any] = {
            "tenant": tenant,
            "agent": 0,
            "generation": generation,
            "bundle": "tenants.hello",
            "image": self.image,
            "replica_url": self.storage.replica_url(tenant, 0, generation),
            "restore_from_url": None if restore_from is None else self.storage.replica_url(tenant, 0, restore_from),
            "s3_endpoint": self.store.address.endpoint,
            "credentials": self.credentials.issue_incarnation(tenant, 0, generation),
            "agent_token": secrets.token_urlsafe(32),
            "admin_token": secrets.token_urlsafe(32),
            "sync_interval": 0.1,
            "monitor_interval": 0.1,
            "fence_interval": 0.5,
        }
        values.update(overrides)
        values.setdefault("lease_timeout", max(5.0, 3 * values["fence_interval"]))
        return AgentSpec(**values)

    def start(self, spec: AgentSpec) -> Any:
        """Create, start and deliver the secrets (the driver's own `run_agent`, not a copy of it)."""
        container = run_agent(self.client, spec)
        self.started.append(container)
        self.volumes.add(spec.volume)
        self.specs[container.name] = spec
        return container

    def ready(self, container: Any, timeout: float = 60.0) -> str:
        """Wait for the agent's /readyz (with its agent token); its URL."""
        return wait_ready(container, self.specs[container.name].agent_token, timeout=timeout)

    def api(self, container: Any, *, admin: bool = False, timeout: float = 10.0) -> httpx.Client:
        """An HTTP client carrying the agent's token (its admin token with `admin`)."""
        spec = self.specs[container.name]
        return httpx.Client(headers=bearer(spec.admin_token if admin else spec.agent_token), timeout=timeout)

    def advance(self, tenant: str, generation: int) -> None:
        """Point CURRENT at `generation`, as the control plane does before starting it."""
        self.storage.advance_current(tenant, 0, generation, self.storage.read_current(tenant, 0))

    def wait_exit(self, container: Any, timeout: float = 60.0) -> int:
        """The exit code once the container is exited for good (not between restarts of its restart policy,
        where Docker's wait can answer early)."""
        state: dict[str, Any] = {}
        for _ in poll(timeout, 0.1):
            container.reload()
            state = container.attrs["State"]
            if state["Status"] == "exited" and not state["Restarting"]:
                return int(state["ExitCode"])
        raise AssertionError(f"{container.name} still {state.get('Status')} after {timeout}s")

    def remove(self, container: Any, *, volume: bool) -> None:
        container.remove(force=True)
        if volume:
            name = container.attrs["Mounts"][0]["Name"]
            self.client.volumes.get(name).remove(force=True)
            self.volumes.discard(name)

    def restore(self, tenant: str, generation: int, into: Path) -> Path:
        return self.storage.restore(self.storage.replica_url(tenant, 0, generation), into)

    def cleanup(self) -> None:
        for container in self.started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for name in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(name).remove(force=True)


@pytest.fixture
def agents(docker_client: Any, agent_image: str, bridge_store: EmbeddedStore) -> Iterator[Agents]:
    storage = admin_storage(bridge_store)
    harness = Agents(docker_client, agent_image, bridge_store, storage, SeaweedCredentials(bridge_store, storage))
    yield harness
    harness.cleanup()


Poll = Callable[[], bool]


def eventually(check: Poll, timeout: float = 30.0, interval: float = 0.1) -> None:
    for _ in poll(timeout, interval):
        if check():
            return
    raise AssertionError(f"condition not met within {timeout}s")
