"""The secrets contract on real Docker (agent_image/SECURITY-NOTES.md): nothing secret in `docker inspect`, tokens on
every route but /healthz, and secrets delivered again after every start of the container.

Decision tested here: agent containers have no Docker restart policy (a restart Docker did by itself would empty
the tmpfs and wait for secrets nobody sends). Every start goes through the control plane's driver, which delivers
the secrets again (`DockerDriver.restart`); a `docker restart` behind its back leaves an agent waiting for them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest

from control_plane.drivers import DockerDriver
from control_plane.drivers.agent_http import bearer
from control_plane.drivers.agent_spec import AgentSpec
from control_plane.storage.credentials import TenantCredentials
from tests.integration.conftest import Agents, eventually
from tests.integration.test_agent_container import logs, workflow_ids


def _secrets(spec: AgentSpec) -> dict[str, str]:
    return {
        "access_key": spec.credentials.access_key,
        "secret_key": spec.credentials.secret_key,
        "agent_token": spec.agent_token,
        "admin_token": spec.admin_token,
    }


@pytest.fixture
def exec_ids(agents: Agents, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the execs the driver creates (Docker drops a finished exec from the container's `ExecIDs`)."""
    created: list[str] = []
    create = agents.client.api.exec_create

    def recording(*args: Any, **kwargs: Any) -> Any:
        answer = create(*args, **kwargs)
        created.append(answer["Id"])
        return answer

    monkeypatch.setattr(agents.client.api, "exec_create", recording)
    return created


def _inspected(client: Any, container: Any, exec_ids: list[str]) -> str:
    """Everything `docker inspect` shows of the container and of every exec run in it (the deliveries)."""
    container.reload()
    execs = [client.api.exec_inspect(exec_id) for exec_id in exec_ids]
    assert execs and all(e["ProcessConfig"]["arguments"][-1] == "agent_image.container.secrets_in" for e in execs)
    return json.dumps({"container": container.attrs, "execs": execs})


def test_inspect_shows_no_secret_while_the_agent_replicates_and_checks_tokens(
    agents: Agents, exec_ids: list[str], tmp_path: Path
) -> None:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    spec = agents.spec(tenant, 1)
    container = agents.start(spec)
    url = agents.ready(container)

    with agents.api(container) as api:
        started = api.post(f"{url}/v1/workflows/count", json={"id": "w-1", "args": [2]})
        assert started.status_code == 201, started.text
        assert api.get(f"{url}/v1/workflows/w-1?wait=30").json()["status"] == "SUCCESS"
        assert api.post(f"{url}/admin/drain").status_code == 403  # the agent token is not the admin token
    eventually(lambda: "w-1" in _restored(agents, tenant, tmp_path), timeout=30, interval=0.2)

    for headers in ({}, bearer("not-" + spec.agent_token), {"Authorization": spec.agent_token}):
        refused = httpx.get(f"{url}/v1/workflows", headers=headers, timeout=5)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized", refused.text
        assert spec.agent_token not in refused.text
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 401
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # the one open route
    assert httpx.get(f"{url}/readyz", headers=bearer(spec.admin_token), timeout=5).status_code == 200

    shown = _inspected(agents.client, container, exec_ids)
    for field, value in _secrets(spec).items():
        assert value not in shown, f"{field} is visible in docker inspect"
        assert value not in logs(container), f"{field} is in the container's log"
    env = dict(line.split("=", 1) for line in container.attrs["Config"]["Env"])
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LITEFLEET_AGENT_TOKEN"} & set(env)
    assert container.attrs["HostConfig"]["Tmpfs"]["/run/litefleet"].startswith("rw,noexec,nosuid,nodev")
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"


def _restored(agents: Agents, tenant: str, tmp_path: Path) -> set[str]:
    try:
        return workflow_ids(agents.restore(tenant, 1, tmp_path / f"r-{len(list(tmp_path.iterdir()))}.db"))
    except FileNotFoundError:
        return set()


def test_a_restarted_container_waits_for_its_secrets_and_the_driver_delivers_them_again(
    agents: Agents, exec_ids: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    spec = agents.spec(tenant, 1)
    container = agents.start(spec)
    url = agents.ready(container)
    with agents.api(container) as api:
        assert api.post(f"{url}/v1/workflows/count", json={"id": "before", "args": [1]}).status_code == 201

    container.restart(timeout=30)  # behind the control plane's back: the tmpfs is empty now
    eventually(lambda: logs(container).count("agent.waiting_for_secrets") >= 2, timeout=30, interval=0.2)
    container.reload()
    assert container.status == "running"

    driver = DockerDriver("unix:///var/run/docker.sock")
    monkeypatch.setattr(driver.client.api, "exec_create", agents.client.api.exec_create)  # recorded too
    incarnation = driver.restart(spec.name, spec.secrets())  # what the control plane's repair does
    assert incarnation is not None and incarnation.status == "running"
    url = agents.ready(container)
    with agents.api(container) as api:
        answer = api.get(f"{url}/v1/workflows/before?wait=30").json()
        assert answer["status"] == "SUCCESS"  # same container, same volume
    assert httpx.get(f"{url}/v1/workflows", timeout=5).status_code == 401

    container.stop(timeout=30)  # stopped: the driver starts it and delivers in one verb
    assert agents.wait_exit(container) == 0
    driver.restart(spec.name, spec.secrets())
    url = agents.ready(container)
    with agents.api(container) as api:
        assert api.get(f"{url}/v1/workflows/before").json()["status"] == "SUCCESS"
    for field, value in _secrets(spec).items():
        assert value not in _inspected(agents.client, container, exec_ids), f"{field} is visible after re-deliveries"


def test_a_cold_start_runs_the_container_while_its_secrets_are_made_and_removes_it_when_they_fail(
    agents: Agents,
) -> None:
    """`DockerDriver.run(skeleton, complete)`, a new agent's cold start: the container is created and started with
    no key and no token (its entrypoint waits for them), while `complete()` moves CURRENT and mints the key, as the
    control plane's fence does beside it; the secrets then go in and the agent serves. When `complete()` fails, the
    container, which never held a secret, is removed."""
    driver = DockerDriver("unix:///var/run/docker.sock")
    tenant = agents.tenant()
    spec = agents.spec(tenant, 1)
    skeleton = dataclasses.replace(spec, credentials=TenantCredentials(tenant, "", ""), agent_token="", admin_token="")
    waited: list[bool] = []

    def complete() -> AgentSpec:
        container = agents.client.containers.get(spec.name)
        eventually(lambda: "agent.waiting_for_secrets" in logs(container), timeout=30, interval=0.1)
        waited.append(True)
        agents.advance(tenant, 1)  # CURRENT moves while the container waits: nothing of it ran yet
        return spec

    try:
        incarnation = driver.run(skeleton, complete)
        assert waited == [True] and incarnation.status == "running"
        container = agents.client.containers.get(spec.name)
        agents.specs[container.name] = spec
        url = agents.ready(container)
        with agents.api(container) as api:
            assert api.post(f"{url}/v1/workflows/count", json={"id": "w-1", "args": [1]}).status_code == 201
    finally:
        driver.remove(spec.name)

    refused = agents.spec(agents.tenant(), 1)

    def mint_fails() -> AgentSpec:
        raise RuntimeError("the key mint failed")

    with pytest.raises(RuntimeError, match="key mint failed"):
        driver.run(dataclasses.replace(refused, agent_token="", admin_token=""), mint_fails)
    assert driver.inspect(refused.name) is None
    with pytest.raises(docker.errors.NotFound):  # its volume went with it
        agents.client.volumes.get(refused.volume)
