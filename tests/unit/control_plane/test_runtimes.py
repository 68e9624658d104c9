"""Per-tenant runtimes (runc, runsc): validated, stored, shown; nodes report theirs; placement honours them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import Event, Node, NodeState
from control_plane.drivers.agent_spec import AgentSpec
from control_plane.drivers.fake import FakeDriver
from control_plane.drivers.runtimes import RUNSC_PIDS_HEADROOM, engine_runtimes, pids_limit, runsc_runtime
from control_plane.fleet.incarnations import Fleet
from control_plane.fleet.placement import NoCapacity, NodeLoad, RuntimeUnavailable, choose_node
from control_plane.reconciler.health import HealthMonitor
from control_plane.settings import Settings
from control_plane.storage.credentials import TenantCredentials
from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas
from tests.unit.control_plane.test_api import client

BOTH = ["runc", "runsc"]


def node(name: str, runtimes: list[str], state: NodeState = NodeState.ready, agents: int = 10) -> Node:
    return Node(name=name, engine_url="unix:///x", state=state, capacity_agents=agents, runtimes=runtimes)


# -- placement ------------------------------------------------------------------------------------------------------


def test_a_runsc_tenant_lands_only_on_a_node_that_has_runsc() -> None:
    loads = [NodeLoad(node("plain", ["runc"]), 0, 0, 0), NodeLoad(node("gvisor", BOTH), 8, 2048, 3)]
    assert choose_node(loads, "acme", 256, runtime="runsc").name == "gvisor"  # busier, but the only one with it
    assert choose_node(loads, "acme", 256).name == "plain"  # runc goes anywhere: spread wins as before


def test_no_ready_node_with_the_runtime_is_its_own_refusal_and_names_each_node() -> None:
    loads = [
        NodeLoad(node("plain", ["runc"]), 0, 0, 0),
        NodeLoad(node("gone", BOTH, NodeState.down), 0, 0, 0),  # has it, but is down: does not count
    ]
    with pytest.raises(RuntimeUnavailable) as refused:
        choose_node(loads, "acme", 256, runtime="runsc")
    assert refused.value.code == "runtime_unavailable"
    assert "plain: no runsc runtime (has runc)" in str(refused.value) and "gone: down" in str(refused.value)


def test_a_full_runsc_node_is_a_capacity_refusal_not_a_runtime_one() -> None:
    loads = [NodeLoad(node("plain", ["runc"]), 0, 0, 0), NodeLoad(node("gvisor", BOTH, agents=1), 1, 256, 0)]
    with pytest.raises(NoCapacity) as refused:
        choose_node(loads, "acme", 256, runtime="runsc")
    assert not isinstance(refused.value, RuntimeUnavailable)
    assert "gvisor: full (1/1 agents)" in str(refused.value)


# -- what the engine and the container get --------------------------------------------------------------------------


def test_runsc_containers_get_pids_headroom_for_the_sandbox_threads() -> None:
    spec = AgentSpec(
        tenant="acme",
        agent=0,
        generation=1,
        bundle="tenants.hello",
        image="img",
        replica_url="s3://b/p",
        s3_endpoint="http://s3",
        credentials=TenantCredentials("acme", "k", "s"),
        agent_token="t",
        admin_token="a",
        pids=200,
    )
    assert spec.pids_limit == 200 and spec.runtime == "runc"
    sandboxed = AgentSpec(**{**spec.__dict__, "runtime": "runsc"})
    assert sandboxed.pids_limit == 200 + RUNSC_PIDS_HEADROOM == pids_limit("runsc", 200)


def test_engine_runtimes_and_the_registration_entry() -> None:
    info = {"Runtimes": {"io.containerd.runc.v2": {}, "runsc": {}, "runc": {}, "io.containerd.runtime.v1.linux": {}}}
    assert engine_runtimes(info) == BOTH
    assert engine_runtimes({}) == []
    assert runsc_runtime() == {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}


# -- the API --------------------------------------------------------------------------------------------------------


def test_the_api_validates_stores_and_shows_a_tenants_runtime(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path)
    offered = {"plain": ["runc"], "gvisor": BOTH}
    api.app.state.probe_engine = lambda body: offered[body.name]  # type: ignore[attr-defined]
    assert api.post("/v1/nodes", json={"name": "plain", "engine_url": "unix:///x"}).status_code == 201

    unknown = api.post("/v1/tenants", json={"name": "acme", "runtime": "kata"})
    assert (unknown.status_code, unknown.json()["code"]) == (422, "invalid_request")
    refused = api.post("/v1/tenants", json={"name": "acme", "runtime": "runsc"})
    assert (refused.status_code, refused.json()["code"]) == (409, "runtime_unavailable"), refused.text
    assert "plain: no runsc runtime" in refused.json()["message"]
    assert api.get("/v1/tenants").json()["items"] == []  # refused: nothing changed

    gvisor = api.post("/v1/nodes", json={"name": "gvisor", "engine_url": "unix:///y"})
    assert gvisor.status_code == 201 and gvisor.json()["runtimes"] == BOTH
    assert api.post("/v1/tenants", json={"name": "acme", "runtime": "runsc"}).status_code == 202
    assert api.post("/v1/tenants", json={"name": "plain-one"}).status_code == 202
    tenants = {tenant["name"]: tenant for tenant in api.get("/v1/tenants").json()["items"]}
    assert (tenants["acme"]["runtime"], tenants["plain-one"]["runtime"]) == ("runsc", "runc")

    to_plain = api.post("/v1/tenants/acme/evacuate", json={"to_node": "plain"})
    assert (to_plain.status_code, to_plain.json()["code"]) == (409, "node_lacks_runtime"), to_plain.text
    assert api.post("/v1/tenants/plain-one/evacuate", json={"to_node": "gvisor"}).status_code == 202


# -- heartbeats ------------------------------------------------------------------------------------------------------


def test_heartbeats_record_what_the_engine_offers_now(engine: Engine) -> None:
    engines: dict[str, FakeDriver] = {}

    def make(url: str) -> FakeDriver:
        return engines.setdefault(url, FakeDriver(url))

    with Session(engine) as session:
        session.add(Node(name="n1", engine_url="fake-1"))  # registered before runsc was installed
        session.commit()
    fleet: Any = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=make)
    monitor = HealthMonitor(engine, fleet, Settings())
    monitor.beat()
    engines["fake-1"].runtimes_offered = BOTH  # the engine was restarted with runsc registered
    monitor.beat()
    with Session(engine) as session:
        assert session.get(Node, "n1").runtimes == ["runc"]  # type: ignore[union-attr]  # read at most once a minute
    monitor._runtimes_read.clear()  # a minute later
    monitor.beat()
    with Session(engine) as session:
        assert session.get(Node, "n1").runtimes == BOTH  # type: ignore[union-attr]
        events = session.exec(select(Event).where(Event.kind == "node.runtimes")).all()
        assert [event.message for event in events] == ["engine offers runc, runsc (was runc)"]
