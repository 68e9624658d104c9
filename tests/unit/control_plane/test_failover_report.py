"""A fail-over reports the loss as what the store can prove (runners/failover.py `loss_report`): the replica's last
txid and its time, "writes acknowledged after T may be lost" with T the last sync the store confirmed, and a txid
count only when the agent reported more than the replica holds — never "at least 0" while it cannot know."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Agent, AgentState
from control_plane.drivers.fake import FakeDriver
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.runners.failover import loss_report
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas


def fleet_with(engine: Engine, replica_txid: int, **row: object) -> tuple[Fleet, Agent]:
    replicas = FakeReplicas()
    if replica_txid:
        replicas.txids[("acme", 0, 3)] = replica_txid
    agent = Agent(id="acme/0", tenant="acme", ordinal=0, generation=3, state=AgentState.running, **row)
    with Session(engine) as session:
        session.add(agent)
        session.commit()
        session.refresh(agent)
    return Fleet(engine, Settings(), replicas, FakeCredentials(), make_driver=FakeDriver), agent


def test_a_confirmed_sync_is_the_moment_after_which_writes_may_be_lost(engine: Engine) -> None:
    fleet, agent = fleet_with(engine, 40, local_txid=40, synced_at=1000.0, store_txid=40)
    report = loss_report(fleet, agent, 3, declared_down=1012.5)
    assert report["last_replicated_txid"] == 40 and report["last_replicated_at"] is not None
    assert report["confirmed_synced_at"] == 1000.0 and report["may_be_lost_after"] == 1000.0
    assert report["loss_window_s"] == 12.5
    assert "lost_txids_at_least" not in report  # nothing proven lost, and no "at least 0" either
    assert "writes acknowledged after 1970-01-01T00:16:40.000+00:00 may be lost" in report["statement"]
    assert "the last sync the store confirmed" in report["statement"]


def test_txids_the_agent_reported_but_the_replica_lacks_are_a_proven_loss(engine: Engine) -> None:
    fleet, agent = fleet_with(engine, 40, local_txid=52, synced_at=1000.0)
    report = loss_report(fleet, agent, 3, declared_down=1010.0)
    assert report["lost_txids_at_least"] == 12 and "at least 12 txids" in report["statement"]


def test_without_a_confirmed_sync_the_bound_is_the_replica_file_and_says_it_is_unproven(engine: Engine) -> None:
    fleet, agent = fleet_with(engine, 7)
    report = loss_report(fleet, agent, 3, declared_down=2e9)
    assert report["confirmed_synced_at"] is None and report["agent_reported_txid"] is None
    assert report["may_be_lost_after"] == report["last_replicated_at"]
    assert "unconfirmed" in report["statement"] and "lost_txids_at_least" not in report


def test_a_measurement_of_another_generation_is_not_used(engine: Engine) -> None:
    fleet, agent = fleet_with(engine, 7, local_txid=99, synced_at=1000.0)
    report = loss_report(fleet, agent, 2, declared_down=1010.0)  # gen 2's replica: the row speaks of gen 3
    assert report["last_replicated_txid"] == 0 and report["confirmed_synced_at"] is None
    assert "lost_txids_at_least" not in report
    assert report["statement"].startswith("the replica has no transaction")


def test_commits_the_agent_counted_unconfirmed_are_reported_as_at_risk_not_lost(engine: Engine) -> None:
    """While the store is frozen Litestream's txids stand still; the runtime's own count of unconfirmed commits
    (from its last /readyz) says how much was at risk then, without claiming it lost."""
    fleet, agent = fleet_with(engine, 40, local_txid=40, synced_at=1000.0, unconfirmed_commits=6, probed_at=1008.0)
    report = loss_report(fleet, agent, 3, declared_down=1012.5)
    assert report["unconfirmed_commits_at_last_probe"] == 6 and report["last_probed_at"] == 1008.0
    assert "lost_txids_at_least" not in report
    assert "at 1970-01-01T00:16:48.000+00:00 the agent counted 6 commits no sync had confirmed" in report["statement"]
    other = loss_report(fleet, agent, 2, declared_down=1012.5)  # another generation's row: not used
    assert other["unconfirmed_commits_at_last_probe"] is None and "counted" not in other["statement"]
