"""The observer follows what the fleet DB says is placed, at the generation it names, and nothing else."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Agent, AgentState
from control_plane.observer import AgentRef
from control_plane.observer.fleet_sync import sync_followers
from tests.unit.control_plane.observed import FakeObserver, add_tenant


def test_followers_match_the_placed_agents_and_come_back_after_a_restart(engine: Engine) -> None:
    add_tenant(engine, "acme", {0: (AgentState.running, 2), 1: (AgentState.running, 1), 2: (AgentState.retained, 1)})
    add_tenant(engine, "sleepy", {0: (AgentState.retained, 3)}, hibernated=True)
    observer = FakeObserver()
    assert sync_followers(cast(Any, observer), engine) == (2, 0)
    assert set(observer.follows) == {AgentRef("acme", 0, 2), AgentRef("acme", 1, 1)}
    assert sync_followers(cast(Any, observer), engine) == (0, 0)  # again: nothing changes

    with Session(engine) as session:  # acme/1 retired (scale-down), acme/0 moved to generation 3
        retired = session.get(Agent, "acme/1")
        moved = session.get(Agent, "acme/0")
        assert retired is not None and moved is not None
        retired.state, moved.generation = AgentState.retained, 3
        session.add_all([retired, moved])
        session.commit()
    sync_followers(cast(Any, observer), engine)
    assert set(observer.follows) == {AgentRef("acme", 0, 3)}

    fresh = FakeObserver()  # a restarted control plane: followers come back from the DB alone
    sync_followers(cast(Any, fresh), engine)
    assert set(fresh.follows) == {AgentRef("acme", 0, 3)}
