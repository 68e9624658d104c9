"""Unreachable is not dead: a node is declared down (and failed over) only after several missed heartbeats."""

from __future__ import annotations

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
