"""Replication lag measured against the store (control_plane/observer/lag.py): what the store lists, not what the
agent believes. The store here is FakeReplicas with a gate that can freeze its LISTs, the clock is the test's."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, update

from control_plane.db.models import Agent, AgentPublic, AgentState, ReplicationState
from control_plane.observer.lag import LagSampler, LagThresholds, Report, assess, confirmed_at
from control_plane.services.tenants import find_tenant, tenant_public
from tests.unit.control_plane.fakes import FakeReplicas
from tests.unit.control_plane.observed import add_tenant

THRESHOLDS = LagThresholds(lagging_after=20.0, stalled_after=45.0)


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FreezableStore(FakeReplicas):
    """LISTs block while `frozen` is cleared (a SIGSTOPped store: the call neither answers nor fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.thawed = threading.Event()
        self.thawed.set()

    def replica_position(self, tenant: str, agent: int, generation: int) -> tuple[int, float | None]:
        self.thawed.wait(10)
        return super().replica_position(tenant, agent, generation)


def report(engine: Engine, agent_id: str, **values: Any) -> None:
    """What the health monitor records from the agent's /readyz."""
    with Session(engine) as session:
        session.execute(update(Agent).where(col(Agent.id) == agent_id).values(**values))
        session.commit()


def public(engine: Engine, agent_id: str) -> AgentPublic:
    with Session(engine) as session:
        return AgentPublic.model_validate(session.get(Agent, agent_id))


def rounds(sampler: LagSampler, count: int = 2) -> dict[str, ReplicationState]:
    states: dict[str, ReplicationState] = {}
    for _ in range(count):
        states = sampler.tick()
        sampler.wait(2)
    return states


@pytest.fixture
def setup(engine: Engine) -> tuple[Engine, FreezableStore, Clock, LagSampler]:
    add_tenant(engine, "acme", {0: (AgentState.running, 1), 1: (AgentState.running, 1)})
    store, clock = FreezableStore(), Clock()
    sampler = LagSampler(engine, store, THRESHOLDS, clock=clock)
    yield engine, store, clock, sampler
    store.thawed.set()
    sampler.close()


def test_caught_up_agent_is_ok_and_synced_at_is_what_its_report_proves(setup: Any) -> None:
    engine, store, clock, sampler = setup
    store.txids[("acme", 0, 1)] = store.txids[("acme", 1, 1)] = 40
    for ordinal in (0, 1):
        report(engine, f"acme/{ordinal}", local_txid=40, probed_at=clock.now, seconds_since_sync=2.0)
    assert rounds(sampler) == {"acme/0": ReplicationState.ok, "acme/1": ReplicationState.ok}
    with Session(engine) as session:
        row = session.get(Agent, "acme/0")
        assert row is not None and row.synced_at == clock.now - 2.0 and row.store_txid == 40
    agent = public(engine, "acme/0")
    assert (agent.replica_txid, agent.local_txid, agent.lag_txids, agent.replication) == (40, 40, 0, "ok")
    assert agent.lag_seconds is not None and agent.lag_seconds >= 2.0


def test_frozen_store_goes_lagging_then_stalled_whatever_the_agent_believes_and_recovers(setup: Any) -> None:
    engine, store, clock, sampler = setup
    store.txids[("acme", 0, 1)] = store.txids[("acme", 1, 1)] = 40
    for ordinal in (0, 1):
        report(engine, f"acme/{ordinal}", local_txid=40, probed_at=clock.now, seconds_since_sync=1.0)
    rounds(sampler)
    synced = clock.now - 1.0

    store.thawed.clear()  # frozen: LISTs hang
    for step in (10, 25, 50):
        clock.now = synced + step  # seconds since the last confirmed sync
        # the agent keeps answering /readyz and (its sync probe failing) keeps reporting its last position
        report(engine, "acme/0", local_txid=40, probed_at=clock.now, seconds_since_sync=0.5, lag_txids=0)
        sampler.tick()
        expected = {10: "ok", 25: "lagging", 50: "stalled"}[step]
        assert public(engine, "acme/0").replication == expected, step
    stalled = public(engine, "acme/0")
    assert stalled.lag_seconds is not None and stalled.lag_seconds > THRESHOLDS.stalled_after
    assert stalled.replication_note is not None and "store" in stalled.replication_note
    with Session(engine) as session:
        tenant = tenant_public(session, find_tenant(session, "acme"))
    assert tenant.replication == "stalled"  # the worst of its agents
    assert tenant.model_dump()["replication"] == "stalled"  # and in the API's JSON

    store.thawed.set()  # the store comes back: the pending read finishes, the agent syncs and reports again
    sampler.wait(5)
    store.txids[("acme", 0, 1)] = 55
    report(engine, "acme/0", local_txid=55, probed_at=clock.now, seconds_since_sync=0.5)
    rounds(sampler, 3)
    recovered = public(engine, "acme/0")
    assert recovered.replication == "ok" and recovered.replica_txid == 55 and recovered.replication_note is None


def test_a_replica_behind_the_reported_txid_is_lagging_then_stalled_with_the_txids_behind(setup: Any) -> None:
    engine, store, clock, sampler = setup
    store.txids[("acme", 0, 1)] = 30
    report(engine, "acme/0", local_txid=30, probed_at=clock.now, seconds_since_sync=0.0)
    rounds(sampler)
    report(engine, "acme/0", local_txid=90, probed_at=clock.now + 1, seconds_since_sync=0.0)
    clock.now += 30
    rounds(sampler)
    agent = public(engine, "acme/0")
    assert (agent.replication, agent.lag_txids) == ("lagging", 60)
    assert agent.replication_note is not None and "60 behind" in agent.replication_note
    clock.now += 30
    assert rounds(sampler)["acme/0"] == ReplicationState.stalled


def test_a_new_generation_is_measured_afresh_and_an_old_measurement_never_lands_on_it(setup: Any) -> None:
    engine, store, clock, sampler = setup
    store.txids[("acme", 0, 1)] = 40
    report(engine, "acme/0", local_txid=40, probed_at=clock.now, seconds_since_sync=0.0)
    rounds(sampler)
    store.thawed.clear()
    sampler.tick()  # a read of gen 1 hangs
    report(engine, "acme/0", generation=2, store_txid=None, synced_at=None, replication=None)
    store.thawed.set()
    sampler.wait(5)
    clock.now += 5
    states = rounds(sampler)
    assert states["acme/0"] == ReplicationState.unknown  # gen 2: nothing reported or confirmed yet
    with Session(engine) as session:
        row = session.get(Agent, "acme/0")
        assert row is not None and row.synced_at is None


def test_not_running_agents_show_unknown_and_are_not_measured(setup: Any) -> None:
    engine, _, _, sampler = setup
    report(engine, "acme/1", state=AgentState.retained, replication="stalled")
    assert "acme/1" not in rounds(sampler)
    assert public(engine, "acme/1").replication == "unknown"


def test_assess_and_confirmed_at_edges() -> None:
    quiet = Report(local_txid=None, probed_at=None, since_sync=None)
    found = assess(
        100.0,
        report=quiet,
        store_txid=5,
        store_checked_at=99.0,
        synced_at=None,
        watched_since=0.0,
        error=None,
        thresholds=THRESHOLDS,
    )
    assert found.state == ReplicationState.unknown
    assert confirmed_at(Report(10, 50.0, 3.0), 9) is None  # the replica does not hold what the agent reported
    assert confirmed_at(Report(10, 50.0, 3.0), 10) == 47.0
    assert confirmed_at(Report(10, 50.0, None), 10) is None  # the agent never saw itself caught up
    assert confirmed_at(Report(10, 50.0, 3.0, ready=False), 10) is None  # an unanswered probe: older fields
    with pytest.raises(ValueError):
        LagThresholds(lagging_after=50, stalled_after=10)
