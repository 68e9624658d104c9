"""Provision, scale, hibernate, wake: make agents `0..n-1` run and retire the rest (their replicas are kept).

Re-running is harmless: each agent's plan is recorded before it acts (CURRENT never moves twice, no incarnation
starts twice), a running agent is kept, and a retired one is not stopped again (its shutdown record is the proof)."""

from __future__ import annotations

from control_plane.db.models import PLACED_STATES, Agent, AgentState, Tenant
from control_plane.drivers.agent_spec import incarnation_name
from control_plane.errors import OperationFailed, PreflightFailed
from control_plane.fleet import preflight
from control_plane.fleet.fence import stopped_before_start
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.planning import StartPlan, plan_start
from control_plane.reconciler.runners.placing import planned


def ensure_running(fleet: Fleet, ctx: OpContext, tenant: Tenant, ordinal: int) -> None:
    """Make agent `ordinal` run. A new ordinal starts generation 1 on an empty database, unless its replicas were
    kept (a scale-down, hibernation, or a deleted-and-recreated tenant): then it restores the newest one."""
    agent = fleet.agent(tenant.name, ordinal)

    def alive() -> bool:
        assert agent.node is not None
        container = fleet.driver(fleet.node(agent.node)).inspect(
            incarnation_name(agent.tenant, agent.ordinal, agent.generation)
        )
        # a running agent whose container stopped behind our back is started again, same generation
        return container is not None and container.status == "running"

    def current() -> int | None:
        found = fleet.storage.read_current(tenant.name, ordinal)
        return None if found is None else found.generation

    try:
        plan = planned(
            fleet, ctx, agent, tenant, lambda place: plan_start(agent, alive=alive, current=current, place=place)
        )
    except Exception:
        fleet.forget_unplaced(tenant.name, ordinal)  # a new ordinal that found no node is not left `starting`
        raise
    if not isinstance(plan, StartPlan):
        raise OperationFailed(f"agent {agent.id} has a move planned in a scale operation")
    if plan.keep:
        return
    stopped_before_start(agent, plan.generation)
    fleet.start(ctx, tenant, ordinal, plan.generation, fleet.node(plan.node), plan.restore_from)


def retire(fleet: Fleet, ctx: OpContext, agent: Agent) -> None:
    """Drain and stop an agent with a proven final sync, keep its replica, remove its container."""
    if agent.state in PLACED_STATES and agent.node is not None:
        fleet.stop(ctx, agent, drain=True)
        fleet.remove(ctx, agent.tenant, agent.ordinal, agent.generation, agent.node)
    fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.retained, node=None, url=None)


def check(fleet: Fleet, tenant: Tenant, target: int) -> None:
    """Preflight: what a scale touches answers before anything is stopped or started. The store always (CURRENT
    moves, final syncs are proven in it), and the engines of the agents it retires (their final sync). Capacity
    for new agents was checked by the API and is placed agent by agent (a scale-up stops nothing)."""
    agents = fleet.agents(tenant.name)
    retiring = [a for a in agents if a.ordinal >= target and a.state in PLACED_STATES and a.node is not None]
    preflight.nodes_reachable(fleet, {str(a.node) for a in retiring})
    preflight.store_reachable(fleet, tenant.name)


def scale_to(fleet: Fleet, ctx: OpContext, target: int) -> None:
    """Retire the ordinals past `target` one at a time (the highest first: never more than one of them down at
    once), then make `0..target-1` run."""
    tenant = fleet.tenant(str(ctx.tenant))
    try:
        check(fleet, tenant, target)
    except PreflightFailed as refused:
        ctx.step("operation.refused", str(refused), code=refused.code)
        raise
    for agent in sorted(fleet.agents(tenant.name), key=lambda a: -a.ordinal):
        if agent.ordinal >= target and agent.state != AgentState.retained:
            retire(fleet, ctx, agent)
    for ordinal in range(target):
        ensure_running(fleet, ctx, tenant, ordinal)
    ctx.set_result("agents", target)


def run_scale(fleet: Fleet, ctx: OpContext) -> None:
    scale_to(fleet, ctx, int(ctx.params["agents"]))
