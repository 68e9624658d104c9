"""Evacuate (a tenant's agents) and drain (a node): stop-before-start moves of agents to new generations.

Re-running is harmless: every agent's plan is recorded before anything moves, and the first run's `stopped_at`
and `ready_at` are kept; an agent marked done is skipped; stopping an exited incarnation proves its final sync
again from its shutdown record, starting one that runs reuses it, removing a removed one is a no-op."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from sqlmodel import Session, col, select

from control_plane.db.models import PLACED_STATES, Agent, AgentState, Node, NodeState, Tenant
from control_plane.errors import OperationFailed
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.planning import MovePlan, plan_move
from control_plane.reconciler.runners.placing import place, split


def plan_moves(fleet: Fleet, ctx: OpContext, agent_ids: set[str], target: str | None) -> None:
    """Plan every agent's new place one after another (`target`, or placement away from its current node), each
    placement seeing the places already promised to the agents planned before it."""
    reserved: list[tuple[str, Tenant]] = []
    for agent_id in sorted(agent_ids):
        agent = fleet.agent(*split(agent_id))
        tenant = fleet.tenant(agent.tenant)
        plan = ctx.plan(agent_id, partial(_next_place, fleet, tenant, agent, target, tuple(reserved)))
        if not ctx.is_done(agent_id):
            reserved.append((plan.node, tenant))


def _next_place(
    fleet: Fleet, tenant: Tenant, agent: Agent, target: str | None, reserved: tuple[tuple[str, Tenant], ...]
) -> MovePlan:
    return plan_move(agent, target=target, place=lambda: place(fleet, tenant, {str(agent.node)}, reserved))


def in_parallel(fleet: Fleet, agent_ids: set[str], one: Callable[[str], None]) -> None:
    """Run `one` for up to `move_parallelism` agents at a time. The first failure fails the operation after the
    others finished: a re-run resumes from the recorded plans."""
    with ThreadPoolExecutor(max_workers=max(1, fleet.settings.move_parallelism)) as pool:
        failures = [f.exception() for f in [pool.submit(one, agent_id) for agent_id in sorted(agent_ids)]]
    for failure in failures:
        if failure is not None:
            raise failure


def move(fleet: Fleet, ctx: OpContext, tenant: Tenant, agent: Agent) -> None:
    """Stop-before-start move of one agent to its planned generation and node; records its downtime."""
    plan = ctx.plan_of(agent.id)
    if not isinstance(plan, MovePlan):
        raise OperationFailed(f"no move planned for agent {agent.id}")
    if ctx.is_done(agent.id):
        return
    if agent.generation == plan.from_generation:
        ctx.remember("stopped_at", time.time(), agent.id)
        fleet.stop(ctx, agent, drain=False)
        fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.retained, url=None)
    fleet.start(ctx, tenant, agent.ordinal, plan.generation, fleet.node(plan.node), plan.from_generation)
    ready_at = float(ctx.remember("ready_at", time.time(), agent.id))
    fleet.remove(ctx, agent.tenant, agent.ordinal, plan.from_generation, plan.from_node)
    downtime = round(ready_at - float(ctx.recalled("stopped_at", agent.id)), 3)
    ctx.mark_done(agent.id, downtime_s=downtime)
    ctx.step(
        "agent.moved",
        f"{plan.from_node} -> {plan.node}, downtime {downtime}s",
        agent=agent.ordinal,
        downtime_s=downtime,
    )


def run_evacuate(fleet: Fleet, ctx: OpContext) -> None:
    tenant = fleet.tenant(str(ctx.tenant))
    to_node, from_node = ctx.params.get("to_node"), ctx.params.get("from_node")
    chosen = ctx.planned()
    for agent in fleet.agents(tenant.name):
        if agent.state == AgentState.running and agent.node != to_node and from_node in (None, agent.node):
            chosen.add(agent.id)
    plan_moves(fleet, ctx, chosen, to_node)
    in_parallel(fleet, chosen, lambda agent_id: move(fleet, ctx, tenant, fleet.agent(*split(agent_id))))
    ctx.set_result("moved", len(ctx.planned()))


def placed_on(fleet: Fleet, node: str) -> list[Agent]:
    with Session(fleet.engine) as session:
        return list(
            session.exec(select(Agent).where(Agent.node == node).where(col(Agent.state).in_(PLACED_STATES))).all()
        )


def run_drain(fleet: Fleet, ctx: OpContext) -> None:
    node = str(ctx.node)
    planned = {agent.id for agent in placed_on(fleet, node)} | ctx.planned()

    def one(agent_id: str) -> None:
        agent = fleet.agent(*split(agent_id))
        move(fleet, ctx, fleet.tenant(agent.tenant), agent)

    plan_moves(fleet, ctx, planned, None)
    in_parallel(fleet, planned, one)
    with Session(fleet.engine) as session:
        row = session.get(Node, node)
        if row is not None:
            row.state = NodeState.cordoned
            session.add(row)
            session.commit()
    ctx.set_result("moved", len(planned))
