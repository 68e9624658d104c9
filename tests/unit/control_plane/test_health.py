"""Unreachable is not dead: a node is declared down (and failed over) only after several missed heartbeats."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import Event, Node, NodeState, Operation, OperationKind
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.health import HealthMonitor
from control_plane.settings import Settings


def test_one_missed_heartbeat_is_not_death_three_are(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Node(name="ghost", engine_url="tcp://127.0.0.1:9"))  # nothing listens there
        session.commit()
    fleet: Any = Fleet(engine, Settings(), storage=None, credentials=None)  # type: ignore[arg-type]
    monitor = HealthMonitor(engine, fleet, Settings(node_grace_heartbeats=3))

    for expected in (NodeState.ready, NodeState.ready, NodeState.down):
        monitor.beat()
        with Session(engine) as session:
            node = session.get(Node, "ghost")
            assert node is not None and node.state == expected
            failovers = session.exec(select(Operation).where(Operation.kind == OperationKind.failover)).all()
            assert len(failovers) == (1 if expected == NodeState.down else 0)
    monitor.beat()  # still down: no second fail-over
    with Session(engine) as session:
        assert len(session.exec(select(Operation)).all()) == 1
        downs = session.exec(select(Event).where(Event.kind == "node.down")).all()
        assert [event.node for event in downs] == ["ghost"]


def test_a_beat_holds_no_write_transaction_while_it_pings(engine: Engine) -> None:
    """Each node's ping writes through a connection of its own: had the beat kept a write transaction open across
    the pings (as it once did), SQLite would make that write wait for it."""
    from control_plane.drivers.fake import FakeDriver
    from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

    class WritingDriver(FakeDriver):
        def ping(self) -> None:
            with Session(engine) as session:
                session.add(Event(kind="test.pinged", message=self.engine_url))
                session.commit()
            super().ping()

    with Session(engine) as session:
        session.add_all([Node(name=f"n{i}", engine_url=f"fake-{i}", missed_heartbeats=1) for i in range(3)])
        session.commit()
    fleet = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=WritingDriver)
    started = time.monotonic()
    HealthMonitor(engine, fleet, Settings()).beat()
    assert time.monotonic() - started < 10
    with Session(engine) as session:
        assert len(session.exec(select(Event).where(Event.kind == "test.pinged")).all()) == 3
        assert {node.missed_heartbeats for node in session.exec(select(Node)).all()} == {0}
