"""Two operations placing at once never both take a node's last place: each plan is recorded in a transaction that
reserves its node and counts the node again (the API fuzz run once found a node holding 5 agents at capacity 4).
On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import Agent, AgentState, Node, NodeState, Operation, OperationKind, OperationState, Tenant
from control_plane.errors import NoCapacityLeft, NodeNotEmpty
from control_plane.fleet.placement import node_loads
from control_plane.reconciler.claims import claim, finish
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.planning import StartPlan, plan_start
from control_plane.reconciler.runners.placing import planned
from control_plane.services.nodes import remove_node
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import fake_fleet


def _fleet(engine: Engine, tenants: str) -> Any:
    with Session(engine) as session:
        session.add_all([Node(name=name, engine_url=f"fake-{name}", capacity_agents=1) for name in ("n1", "n2")])
        session.add_all([Tenant(name=name, agents=1, memory_mb=64) for name in tenants])
        session.add_all(
            [Operation(kind=OperationKind.provision, tenant=name, params={"agents": 1}) for name in tenants]
        )
        session.commit()
    fleet, _ = fake_fleet(engine, Settings())
    return fleet


def _contexts(engine: Engine, count: int) -> list[OpContext]:
    claimed = [claim(engine, lease=30) for _ in range(count)]
    return [OpContext(engine, *taken) for taken in claimed if taken is not None]


def _plan(fleet: Any, ctx: OpContext) -> StartPlan:
    agent, tenant = fleet.agent(str(ctx.tenant), 0), fleet.tenant(str(ctx.tenant))
    plan = planned(
        fleet, ctx, agent, tenant, lambda place: plan_start(agent, alive=bool, current=lambda: None, place=place)
    )
    assert isinstance(plan, StartPlan)
    return plan


def test_two_provisions_that_read_the_loads_together_take_different_nodes(engine: Engine) -> None:
    fleet = _fleet(engine, "ab")
    both_read = threading.Barrier(2, timeout=10)
    placements: list[str] = []
    real_place = fleet.place

    def place_after_the_other_read(*args: Any, **kwargs: Any) -> Node:
        node = real_place(*args, **kwargs)
        placements.append(node.name)
        if len(placements) <= 2:
            both_read.wait()  # each first placement has read the loads before either plan is recorded
        return node

    fleet.place = place_after_the_other_read
    contexts = _contexts(engine, 2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        plans = list(pool.map(lambda ctx: _plan(fleet, ctx), contexts))

    assert placements[:2] == ["n1", "n1"]  # both chose the same last place ...
    assert sorted(plan.node for plan in plans) == ["n1", "n2"]  # ... and the one that lost it placed again
    with Session(engine) as session:
        loads = node_loads(session, "a")
        assert {name: load.agents for name, load in loads.items()} == {"n1": 1, "n2": 1}
        reserved = {agent.id: agent.reserved_node for agent in session.exec(select(Agent))}
        assert reserved == {f"{ctx.tenant}/0": plan.node for ctx, plan in zip(contexts, plans, strict=True)}


def test_a_full_fleet_refuses_the_third_and_an_operations_end_gives_its_places_back(engine: Engine) -> None:
    fleet = _fleet(engine, "abc")
    first, second, third = _contexts(engine, 3)
    freed = _plan(fleet, first).node
    assert {freed, _plan(fleet, second).node} == {"n1", "n2"}
    with pytest.raises(NoCapacityLeft, match="full"):
        _plan(fleet, third)

    assert finish(engine, first.id, first.token, "failed before it started", {})
    with Session(engine) as session:
        assert session.get(Agent, f"{first.tenant}/0").reserved_node is None  # type: ignore[union-attr]
    assert _plan(fleet, third).node == freed


def test_a_re_run_reads_its_plan_back_and_reserves_nothing_twice(engine: Engine) -> None:
    fleet = _fleet(engine, "a")
    (ctx,) = _contexts(engine, 1)
    plan = _plan(fleet, ctx)
    again = OpContext(engine, session_operation(engine, ctx.id), ctx.token)
    assert _plan(fleet, again) == plan
    with Session(engine) as session:
        assert node_loads(session, "a")[plan.node].agents == 1


def session_operation(engine: Engine, op_id: str) -> Operation:
    with Session(engine) as session:
        op = session.get(Operation, op_id)
        assert op is not None
        return op


def test_a_failed_agent_keeps_its_place_for_the_repair_that_restarts_it_there(engine: Engine) -> None:
    fleet = _fleet(engine, "b")
    with Session(engine) as session:
        session.add(Tenant(name="a", agents=1, memory_mb=64))
        session.add(Agent(id="a/0", tenant="a", ordinal=0, generation=1, node="n1", state=AgentState.failed))
        session.commit()
    (ctx,) = _contexts(engine, 1)
    assert _plan(fleet, ctx).node == "n2"


def test_a_node_that_began_draining_after_the_loads_were_read_is_placed_around(engine: Engine) -> None:
    fleet = _fleet(engine, "a")
    real_place = fleet.place

    def place_then_the_drain_begins(*args: Any, **kwargs: Any) -> Node:
        node = real_place(*args, **kwargs)
        if node.name == "n1":
            with Session(engine) as session:
                row = session.get(Node, "n1")
                assert row is not None
                row.state = NodeState.draining
                session.add(row)
                session.commit()
        return node

    fleet.place = place_then_the_drain_begins
    (ctx,) = _contexts(engine, 1)
    assert _plan(fleet, ctx).node == "n2"


def test_a_place_held_by_an_operation_that_ended_counts_nowhere_and_one_held_keeps_its_node(engine: Engine) -> None:
    fleet = _fleet(engine, "a")
    (ctx,) = _contexts(engine, 1)
    node = _plan(fleet, ctx).node
    with Session(engine) as session:
        with pytest.raises(NodeNotEmpty, match="planned onto it"):
            remove_node(session, node)
        op = session.get(Operation, ctx.id)
        assert op is not None
        op.state, op.finished_at = OperationState.succeeded, 1.0  # ended by a control plane that kept no places
        session.add(op)
        session.commit()
        assert node_loads(session, "a")[node].agents == 0
        remove_node(session, node)
