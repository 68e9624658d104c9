"""The warm pool against the real engine, SeaweedFS and Litestream: a pool container idles with no identity and no
secret; a claim turns it into a new agent that serves and replicates; the claimed container restarts as that agent
and its removal takes its pool-named volume with it. Refused claims leave the pool container as it was."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest

from agent_image import contract
from control_plane.drivers import DockerDriver, agent_spec
from control_plane.drivers.agent_spec import PoolSpec
from tests.integration.conftest import Agents, eventually


@pytest.fixture
def pool_driver(docker_client: Any) -> Iterator[tuple[DockerDriver, str]]:
    fleet = f"lfpool-{secrets.token_hex(3)}"
    driver = DockerDriver("unix:///var/run/docker.sock")
    yield driver, fleet
    for found in docker_client.containers.list(all=True, filters={"label": f"io.litefleet.fleet={fleet}"}):
        driver.remove(found.name)


def _logs(client: Any, name: str) -> str:
    return str(client.containers.get(name).logs().decode(errors="replace"))


def test_a_claimed_pool_container_serves_replicates_restarts_and_is_removed_whole(
    agents: Agents, pool_driver: tuple[DockerDriver, str]
) -> None:
    driver, fleet = pool_driver
    client = agents.client
    member = driver.start_pool(PoolSpec(image=agents.image, fleet=fleet, memory_mb=128, cpus=0.5))
    eventually(lambda: "agent.pooled" in _logs(client, member.name), timeout=60)
    pooled = client.containers.get(member.name)
    assert pooled.attrs["Config"]["Env"].count(f"{contract.POOLED}=1") == 1
    assert not any(v.startswith("LITEFLEET_TENANT") for v in pooled.attrs["Config"]["Env"])
    assert not pooled.attrs["NetworkSettings"]["Networks"]  # no network before its claim, not even "none"
    assert [m.name for m in driver.list_pool(fleet)] == [member.name] and driver.list_pool(fleet)[0].ready
    assert driver.list_managed(fleet) == []  # an unclaimed pool container is no incarnation

    tenant = agents.tenant()
    spec = agents.spec(tenant, 1, fleet=fleet, memory_mb=256, cpus=1.0)
    assert driver.claim(member.name, dataclasses.replace(spec, image="litefleet/other:none")) is None  # image
    assert driver.claim(member.name, agents.spec(tenant, 2, restore_from=1, fleet=fleet)) is None  # a restore
    agents.advance(tenant, 1)
    incarnation = driver.claim(member.name, spec)
    assert incarnation is not None
    assert (incarnation.name, incarnation.tenant, incarnation.agent, incarnation.generation) == (
        spec.name,
        tenant,
        0,
        1,
    )
    assert driver.list_pool(fleet) == [] and [i.name for i in driver.list_managed(fleet)] == [spec.name]
    container = client.containers.get(spec.name)
    agents.specs[spec.name] = spec
    agents.ready(container)
    prefix = agents.storage.replica_prefix(tenant, 0, 1)
    eventually(lambda: bool(agents.storage.keys(prefix)), timeout=30)  # replicating to its own generation's path
    assert set(container.attrs["NetworkSettings"]["Networks"]) == {"bridge"}  # its one network (no isolation here)
    host = container.attrs["HostConfig"]
    assert (host["Memory"], host["NanoCpus"]) == (256 * 2**20, 10**9)
    environment = " ".join(container.attrs["Config"]["Env"])
    assert spec.admin_token not in environment and spec.credentials.secret_key not in environment
    record = container.exec_run(["cat", "/data/claim.json"]).output.decode()
    assert tenant in record and spec.agent_token not in record and spec.credentials.secret_key not in record
    assert driver.claim(member.name, spec) == driver.inspect(spec.name)  # a repeated claim changes nothing

    stopped = driver.stop(spec.name, timeout=30)  # a claimed container stops with a proven final sync
    assert stopped is not None and stopped.exit_code == 0
    driver.restart(spec.name, spec.secrets())  # and starts again as the same agent (the record is on the volume)
    agents.ready(client.containers.get(spec.name))
    assert "bad_identity" not in _logs(client, spec.name)

    volume = pooled.attrs["Mounts"][0]["Name"]
    driver.remove(spec.name)
    assert driver.inspect(spec.name) is None
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)


def test_a_pool_container_of_a_moved_tag_is_outdated_and_never_claimed(
    agents: Agents, pool_driver: tuple[DockerDriver, str]
) -> None:
    driver, fleet = pool_driver
    client = agents.client
    tag = f"lfpool/agent:{secrets.token_hex(4)}"
    client.images.get(agents.image).tag(tag)
    try:
        member = driver.start_pool(PoolSpec(image=tag, fleet=fleet))
        assert driver.list_pool(fleet) == [member] and member.image == tag
        client.images.get("litefleet/base:bookworm").tag(tag)  # the node's tag now names other content
        assert [m.image for m in driver.list_pool(fleet)] == [f"{tag} (outdated)"]
        tenant = agents.tenant()
        agents.advance(tenant, 1)
        assert driver.claim(member.name, agents.spec(tenant, 1, fleet=fleet, image=tag)) is None
        assert [m.name for m in driver.list_pool(fleet)] == [member.name]  # left as it was, for the refill
    finally:
        client.images.remove(tag)


def test_a_claimed_agent_serves_in_its_preloaded_process_and_dies_with_litestream(
    agents: Agents, pool_driver: tuple[DockerDriver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim came on the pool container's stdin (no exec), the pre-imported entrypoint process (PID 1) serves,
    Litestream is its child; when Litestream is killed the agent does not go on unreplicated: the container exits."""
    driver, fleet = pool_driver
    client = agents.client
    member = driver.start_pool(PoolSpec(image=agents.image, fleet=fleet))
    eventually(lambda: "agent.pooled" in _logs(client, member.name), timeout=60)
    assert client.containers.get(member.name).attrs["Config"]["OpenStdin"]
    tenant = agents.tenant()
    spec = agents.spec(tenant, 1, fleet=fleet)
    agents.advance(tenant, 1)

    def no_exec(*_: object) -> None:
        raise AssertionError("a first claim goes on the container's stdin, not by exec")

    monkeypatch.setattr(agent_spec, "deliver_claim", no_exec)
    assert driver.claim(member.name, spec) is not None
    container = client.containers.get(spec.name)
    agents.specs[spec.name] = spec
    agents.ready(container)
    logs = _logs(client, spec.name)
    assert '"phase": "preloaded"' in logs and spec.credentials.secret_key not in logs
    assert spec.agent_token not in logs
    one = container.exec_run(["cat", "/proc/1/cmdline"]).output.replace(b"\0", b" ").decode()
    assert "agent_image.container.entrypoint" in one  # the agent is PID 1; Litestream its child
    kill = (
        "import os, signal\n"
        "for p in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')[0].endswith(b'litestream'):\n"
        "        os.kill(int(p), signal.SIGKILL)"
    )
    container.exec_run(["/opt/litefleet/bin/python3", "-c", kill])
    eventually(lambda: client.containers.get(spec.name).status == "exited", timeout=30)
    assert client.containers.get(spec.name).attrs["State"]["ExitCode"] == 1
    assert "litestream.exited" in _logs(client, spec.name)


def test_a_claim_cut_short_after_its_rename_is_finished_whole_by_the_start_s_re_run(
    agents: Agents, pool_driver: tuple[DockerDriver, str]
) -> None:
    """A control plane killed between a claim's rename and the rest of it leaves a pool container under the
    incarnation's name, still on no network and with the pool's limits. The start's re-run (`run`) finishes the
    claim as a claim does, network and limits first, and only then gives it its identity: it serves on its one
    network with the tenant's limits."""
    driver, fleet = pool_driver
    client = agents.client
    member = driver.start_pool(PoolSpec(image=agents.image, fleet=fleet, memory_mb=128, cpus=0.5))
    eventually(lambda: "agent.pooled" in _logs(client, member.name), timeout=60)
    tenant = agents.tenant()
    spec = agents.spec(tenant, 1, fleet=fleet, memory_mb=256, cpus=1.0)
    agents.advance(tenant, 1)
    client.containers.get(member.name).rename(spec.name)  # the cut: renamed, nothing else

    driver.run(spec)
    container = client.containers.get(spec.name)
    agents.specs[spec.name] = spec
    agents.ready(container)
    assert set(container.attrs["NetworkSettings"]["Networks"]) == {"bridge"}  # not "none": finished
    host = container.attrs["HostConfig"]
    assert (host["Memory"], host["NanoCpus"]) == (256 * 2**20, 10**9)  # the tenant's limits, not the pool's


def test_an_idle_pool_container_stops_at_once_with_the_before_serving_exit_code(
    agents: Agents, pool_driver: tuple[DockerDriver, str]
) -> None:
    """PID 1 ignores a signal it has no handler for: without the entrypoint's, `docker stop` waited out its whole
    grace period for the SIGKILL."""
    driver, fleet = pool_driver
    client = agents.client
    member = driver.start_pool(PoolSpec(image=agents.image, fleet=fleet))
    eventually(lambda: "agent.pooled" in _logs(client, member.name), timeout=60)
    container = client.containers.get(member.name)
    started = time.monotonic()
    container.stop(timeout=30)
    took = time.monotonic() - started
    container.reload()
    assert container.attrs["State"]["ExitCode"] == contract.EXIT_STOPPED_BEFORE_SERVING, _logs(client, member.name)
    assert took < 5, f"stopped in {took:.1f}s: the SIGTERM was not handled"
    assert "stopped: SIGTERM before serving" in _logs(client, member.name)


def test_of_two_control_planes_claiming_one_pool_container_only_the_first_gets_it(
    agents: Agents, pool_driver: tuple[DockerDriver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second control plane looked the pool container up before the first renamed it (two control planes on
    one PostgreSQL): its claim changes nothing and answers None (it starts cold); the first's agent serves on."""
    driver, fleet = pool_driver
    client = agents.client
    member = driver.start_pool(PoolSpec(image=agents.image, fleet=fleet))
    eventually(lambda: "agent.pooled" in _logs(client, member.name), timeout=60)
    stale = client.containers.get(member.name)  # the second control plane's look, before the first's claim
    first, second = agents.tenant(), agents.tenant()
    won, lost = agents.spec(first, 1, fleet=fleet), agents.spec(second, 1, fleet=fleet)
    agents.advance(first, 1)
    agents.advance(second, 1)
    assert driver.claim(member.name, won) is not None
    other = DockerDriver("unix:///var/run/docker.sock")
    monkeypatch.setattr(other, "_get", lambda name: stale)
    assert other.claim(member.name, lost) is None
    container = client.containers.get(won.name)
    assert container.id == stale.id
    agents.specs[won.name] = won
    agents.ready(container)  # the first's agent serves, under its own name
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(lost.name)


def test_a_pool_container_an_earlier_version_left_on_none_is_claimed_onto_its_one_network(
    agents: Agents, pool_driver: tuple[DockerDriver, str]
) -> None:
    """Pool containers made before they idled with no network at all sit on `none`: a claim takes `none` away
    first (Docker refuses a network beside it), and the agent serves on its one network."""
    driver, fleet = pool_driver
    client = agents.client
    member = driver.start_pool(PoolSpec(image=agents.image, fleet=fleet))
    client.api.connect_container_to_network(member.name, "none")  # as an earlier version left it
    assert set(client.containers.get(member.name).attrs["NetworkSettings"]["Networks"]) == {"none"}
    eventually(lambda: "agent.pooled" in _logs(client, member.name), timeout=60)
    tenant = agents.tenant()
    agents.advance(tenant, 1)
    spec = agents.spec(tenant, 1, fleet=fleet)
    assert driver.claim(member.name, spec) is not None
    container = client.containers.get(spec.name)
    assert set(container.attrs["NetworkSettings"]["Networks"]) == {"bridge"}
    agents.specs[spec.name] = spec
    agents.ready(container)
