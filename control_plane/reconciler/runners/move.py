"""What each kind of operation does, written to be re-run from the top after a crash.

Each runner reads desired state from the fleet DB and actual state from object storage and the engines, and
records its plan (which generation goes to which node) in the operation before acting, so a second run follows
the same plan: CURRENT never moves twice, no incarnation is started twice, stopped incarnations are not stopped
again (their shutdown record is the proof)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from sqlmodel import Session, col, delete, select

from control_plane.db.models import (
    PLACED_STATES,
    Agent,
    AgentState,
    Node,
    NodeState,
    OperationKind,
    Tenant,
    TenantState,
)
from control_plane.drivers.agent_spec import incarnation_name
from control_plane.errors import OperationFailed
from control_plane.fleet.incarnations import Fleet
from control_plane.fleet.placement import NoCapacity
from control_plane.reconciler.context import OpContext, Runner


def _plan(ctx: OpContext, agent: Agent, make: Callable[[], dict[str, object]]) -> dict[str, object]:
    with ctx.lock:
        plans = ctx.params.setdefault("plan", {})
        if agent.id in plans:
            return dict(plans[agent.id])
    plan = make()
    with ctx.lock:
        plans[agent.id] = plan
    ctx.save()
    return dict(plan)


def _place(
    fleet: Fleet, tenant: Tenant, exclude: AbstractSet[str] = frozenset(), reserved: Sequence[tuple[str, Tenant]] = ()
) -> str:
    try:
        return fleet.place(tenant, exclude, reserved).name
    except NoCapacity as exc:
        raise OperationFailed(str(exc)) from None


def _done(ctx: OpContext, agent_id: str) -> bool:
    with ctx.lock:
        return agent_id in ctx.params.get("done", [])


def _move_many(
    fleet: Fleet, ctx: OpContext, agent_ids: set[str], target: str | None, one: Callable[[str], None]
) -> None:
    """Plan every agent's new place one after another (`target`, or placement away from its current node, which
    sees the places already promised), then run `one` for up to `move_parallelism` agents at a time. The first
    failure fails the operation after the others finished: a re-run resumes from the recorded plans."""
    reserved: list[tuple[str, Tenant]] = []
    for agent_id in sorted(agent_ids):
        agent = fleet.agent(*_split(agent_id))
        tenant = fleet.tenant(agent.tenant)
        make = partial(_next_generation, fleet, tenant, agent, target, str(agent.node), reserved)
        plan = _plan(ctx, agent, make)
        if not _done(ctx, agent_id):
            reserved.append((str(plan["node"]), tenant))
    with ThreadPoolExecutor(max_workers=max(1, fleet.settings.move_parallelism)) as pool:
        failures = [f.exception() for f in [pool.submit(one, agent_id) for agent_id in sorted(agent_ids)]]
    for failure in failures:
        if failure is not None:
            raise failure


def ensure_running(fleet: Fleet, ctx: OpContext, tenant: Tenant, ordinal: int) -> None:
    """Make agent `ordinal` run. A new ordinal starts generation 1 on an empty database, unless its replicas were
    kept (a scale-down, hibernation, or a deleted-and-recreated tenant): then it restores the newest one."""
    agent = fleet.agent(tenant.name, ordinal)

    def make() -> dict[str, object]:
        if agent.state == AgentState.running and agent.node is not None:
            container = fleet.driver(fleet.node(agent.node)).inspect(
                incarnation_name(agent.tenant, agent.ordinal, agent.generation)
            )
            alive = container is not None and container.status == "running"
            # a running agent whose container stopped behind our back is started again, same generation
            return {"generation": agent.generation, "restore_from": None, "node": agent.node, "keep": alive}
        if agent.state in (AgentState.starting, AgentState.failed) and agent.generation and agent.node:
            # an earlier operation died while starting this incarnation: finish starting it (its own replica,
            # if it made one, wins over the older generation's in the entrypoint)
            return {
                "generation": agent.generation,
                "restore_from": agent.generation - 1 or None,
                "node": agent.node,
                "keep": False,
            }
        current = fleet.storage.read_current(tenant.name, ordinal)
        last = max(agent.generation, current.generation if current else 0)
        return {
            "generation": last + 1,
            "restore_from": last or None,
            "node": _place(fleet, tenant),
            "keep": False,
        }

    plan = _plan(ctx, agent, make)
    if plan["keep"]:
        return
    if agent.state in PLACED_STATES and agent.generation != plan["generation"] and agent.node is not None:
        raise OperationFailed(f"agent {agent.id} is {agent.state.value} as gen {agent.generation}; stop it first")
    restore_from = plan["restore_from"]
    fleet.start(
        ctx,
        tenant,
        ordinal,
        int(str(plan["generation"])),
        fleet.node(str(plan["node"])),
        int(str(restore_from)) if restore_from else None,
    )


def retire(fleet: Fleet, ctx: OpContext, agent: Agent) -> None:
    """Drain and stop an agent with a proven final sync, keep its replica, remove its container."""
    if agent.state in PLACED_STATES and agent.node is not None:
        fleet.stop(ctx, agent, drain=True)
        fleet.remove(ctx, agent.tenant, agent.ordinal, agent.generation, agent.node)
    fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.retained, node=None, url=None)


def _next_generation(
    fleet: Fleet,
    tenant: Tenant,
    agent: Agent,
    target: str | None,
    avoid: str,
    reserved: Sequence[tuple[str, Tenant]] = (),
) -> dict[str, object]:
    return {
        "from_generation": agent.generation,
        "from_node": agent.node,
        "generation": agent.generation + 1,
        "node": target or _place(fleet, tenant, {avoid}, reserved),
    }


def move(fleet: Fleet, ctx: OpContext, tenant: Tenant, agent: Agent, target: str | None, avoid: str) -> None:
    """Stop-before-start move of one agent to a new generation on another node; records its downtime."""

    plan = _plan(ctx, agent, partial(_next_generation, fleet, tenant, agent, target, avoid))
    if _done(ctx, agent.id):
        return
    from_generation, from_node = int(str(plan["from_generation"])), str(plan["from_node"])
    if agent.generation == from_generation:
        with ctx.lock:
            ctx.params.setdefault("stopped_at", {}).setdefault(agent.id, time.time())
        ctx.save()
        fleet.stop(ctx, agent, drain=False)
        fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.retained, url=None)
    fleet.start(
        ctx, tenant, agent.ordinal, int(str(plan["generation"])), fleet.node(str(plan["node"])), from_generation
    )
    with ctx.lock:
        ready_at = ctx.params.setdefault("ready_at", {}).setdefault(agent.id, time.time())
    ctx.save()
    fleet.remove(ctx, agent.tenant, agent.ordinal, from_generation, from_node)
    with ctx.lock:
        downtime = round(ready_at - float(ctx.params["stopped_at"][agent.id]), 3)
        ctx.result.setdefault("downtime_s", {})[agent.id] = downtime
        ctx.params.setdefault("done", []).append(agent.id)
    ctx.save()
    ctx.step(
        "agent.moved", f"{from_node} -> {plan['node']}, downtime {downtime}s", agent=agent.ordinal, downtime_s=downtime
    )


def scale_to(fleet: Fleet, ctx: OpContext, target: int) -> None:
    tenant = fleet.tenant(str(ctx.tenant))
    for agent in sorted(fleet.agents(tenant.name), key=lambda a: -a.ordinal):
        if agent.ordinal >= target and agent.state != AgentState.retained:
            retire(fleet, ctx, agent)
    for ordinal in range(target):
        ensure_running(fleet, ctx, tenant, ordinal)
    ctx.result["agents"] = target
    ctx.save()


def run_evacuate(fleet: Fleet, ctx: OpContext) -> None:
    tenant = fleet.tenant(str(ctx.tenant))
    to_node, from_node = ctx.params.get("to_node"), ctx.params.get("from_node")
    chosen = set(ctx.params.get("plan", {}))
    for agent in fleet.agents(tenant.name):
        if agent.state == AgentState.running and agent.node != to_node and from_node in (None, agent.node):
            chosen.add(agent.id)

    def one(agent_id: str) -> None:
        agent = fleet.agent(*_split(agent_id))
        move(fleet, ctx, tenant, agent, to_node, avoid=str(agent.node))

    _move_many(fleet, ctx, chosen, to_node, one)
    ctx.result["moved"] = len(ctx.params.get("plan", {}))
    ctx.save()


def run_drain(fleet: Fleet, ctx: OpContext) -> None:
    node = str(ctx.node)
    with Session(fleet.engine) as session:
        here = session.exec(select(Agent).where(Agent.node == node).where(col(Agent.state).in_(PLACED_STATES))).all()
    planned = {agent.id for agent in here} | set(ctx.params.get("plan", {}))

    def one(agent_id: str) -> None:
        agent = fleet.agent(*_split(agent_id))
        move(fleet, ctx, fleet.tenant(agent.tenant), agent, None, avoid=node)

    _move_many(fleet, ctx, planned, None, one)
    with Session(fleet.engine) as session:
        row = session.get(Node, node)
        if row is not None:
            row.state = NodeState.cordoned
            session.add(row)
            session.commit()
    ctx.result["moved"] = len(planned)
    ctx.save()


def run_failover(fleet: Fleet, ctx: OpContext) -> None:
    """Restart every agent of a node that went down elsewhere, from its last replica, as a new generation.

    Nothing on the dead node can be stopped or proven: CURRENT moves to g+1 first and g's key is revoked, so a
    zombie that comes back can neither keep its fence nor write; what it had not replicated is lost, and the
    result says how much (the replica's txid and the age of its last sync when the node was declared down).
    Re-running is safe for the same reasons as `move`: the plan is recorded, starting reuses the container."""
    node = str(ctx.node)
    declared_down = float(ctx.params.setdefault("declared_down_at", time.time()))
    with Session(fleet.engine) as session:
        here = session.exec(select(Agent).where(Agent.node == node).where(col(Agent.state).in_(PLACED_STATES))).all()

    def one(agent_id: str) -> None:
        if _done(ctx, agent_id):
            return
        agent = fleet.agent(*_split(agent_id))
        tenant = fleet.tenant(agent.tenant)
        plan = _plan(ctx, agent, partial(_next_generation, fleet, tenant, agent, None, node))
        old = int(str(plan["from_generation"]))
        txid, synced_at = fleet.storage.replica_position(agent.tenant, agent.ordinal, old)
        # the agent's last reported local txid, if it was probed as this generation: a lower bound of the loss
        known_local = agent.local_txid if agent.generation == old and agent.local_txid is not None else None
        lost_at_least = None if known_local is None else max(0, known_local - txid)
        fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.lost)
        fleet.credentials.revoke_incarnation(agent.tenant, agent.ordinal, old)
        fleet.start(ctx, tenant, agent.ordinal, int(str(plan["generation"])), fleet.node(str(plan["node"])), old)
        window = None if synced_at is None else round(max(0.0, declared_down - synced_at), 3)
        with ctx.lock:
            ctx.result.setdefault("restored_txid", {})[agent_id] = txid
            ctx.result.setdefault("loss_window_s", {})[agent_id] = window
            ctx.result.setdefault("lost_txids_at_least", {})[agent_id] = lost_at_least
            ctx.params.setdefault("done", []).append(agent_id)
        ctx.save()
        ctx.step(
            "agent.failed_over",
            f"{node} is down: gen {plan['generation']} on {plan['node']} from gen {old}'s replica at txid {txid}; "
            f"writes in the last {window}s before the node was declared down may be lost "
            f"(its last probe saw local txid {known_local})",
            agent=agent.ordinal,
            restored_txid=txid,
            loss_window_s=window,
        )

    _move_many(fleet, ctx, {agent.id for agent in here} | set(ctx.params.get("plan", {})), None, one)
    ctx.result["moved"] = len(ctx.params.get("done", []))
    ctx.save()


def run_delete(fleet: Fleet, ctx: OpContext) -> None:
    tenant = str(ctx.tenant)
    for agent in fleet.agents(tenant):
        if agent.node is not None and agent.generation:
            try:
                fleet.stop(ctx, agent, drain=False)
            except OperationFailed as exc:
                ctx.step("agent.stop_unproven", str(exc), agent=agent.ordinal)
            fleet.remove(ctx, tenant, agent.ordinal, agent.generation, agent.node)
            fleet.set_agent(tenant, agent.ordinal, node=None, url=None, state=AgentState.retained)
    if ctx.params.get("purge"):
        removed = fleet.storage.purge_tenant(tenant)
        ctx.step("tenant.purged", f"{removed} objects deleted")
    else:
        ctx.step("tenant.retained", "replicas kept; re-creating the tenant restores them")
    with Session(fleet.engine) as session:
        session.exec(delete(Agent).where(col(Agent.tenant) == tenant))
        row = session.get(Tenant, tenant)
        if row is not None and row.state == TenantState.deleting:
            session.delete(row)
        session.commit()


def _split(agent_id: str) -> tuple[str, int]:
    tenant, ordinal = agent_id.rsplit("/", 1)
    return tenant, int(ordinal)


def runners(fleet: Fleet) -> dict[OperationKind, Runner]:
    def target_count(ctx: OpContext) -> None:
        scale_to(fleet, ctx, int(ctx.params["agents"]))

    return {
        OperationKind.provision: target_count,
        OperationKind.scale: target_count,
        OperationKind.hibernate: target_count,
        OperationKind.wake: target_count,
        OperationKind.evacuate: lambda ctx: run_evacuate(fleet, ctx),
        OperationKind.drain: lambda ctx: run_drain(fleet, ctx),
        OperationKind.failover: lambda ctx: run_failover(fleet, ctx),
        OperationKind.delete: lambda ctx: run_delete(fleet, ctx),
    }
