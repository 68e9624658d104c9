"""Evacuate (a tenant's agents) and drain (a node): moves of agents to new generations, warm (a follower promoted
after the source's proven stop) or cold (stop, then restore and start).

Re-running is harmless: every agent's plan is recorded before anything moves, and the first run's `stopped_at`,
`final_txid`, `ready_at` and `moved_by` (the strategy) are kept; an agent marked done is skipped; stopping an
exited incarnation proves its final sync again from its shutdown record, a follower that runs is reused, starting
one that runs reuses it, promoting a promoted one is a no-op, removing a removed one is a no-op."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NoReturn

from sqlmodel import Session, col, select

from control_plane.db.models import PLACED_STATES, Agent, AgentState, Node, NodeState, Tenant
from control_plane.errors import OperationFailed, PreflightFailed, ReplicaCorrupt, RollbackFailed, RolledBack
from control_plane.fleet import preflight
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.claims import LostLease
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.pacing import PACER
from control_plane.reconciler.planning import MovePlan, plan_move
from control_plane.reconciler.runners.placing import planned, split
from control_plane.timing import poll


def plan_moves(fleet: Fleet, ctx: OpContext, agent_ids: set[str], target: str | None) -> None:
    """Plan every agent's new place one after another (`target`, or placement away from its current node), each
    placement seeing the places reserved for the agents planned before it, by this operation or another."""
    for agent_id in sorted(agent_ids):
        agent = fleet.agent(*split(agent_id))
        tenant = fleet.tenant(agent.tenant)
        planned(
            fleet,
            ctx,
            agent,
            tenant,
            partial(_move_plan, agent, target),
            exclude={str(agent.node)},
        )


def _move_plan(agent: Agent, target: str | None, place: Callable[[], str]) -> MovePlan:
    return plan_move(agent, target=target, place=place)


def max_unavailable(fleet: Fleet, ctx: OpContext) -> int:
    """How many of one tenant's agents the operation may take down at once: its `max_unavailable` parameter, else
    the setting (at least 1)."""
    return max(1, int(ctx.params.get("max_unavailable") or fleet.settings.max_unavailable))


def in_parallel(
    fleet: Fleet, ctx: OpContext, agent_ids: set[str], one: Callable[[str], None], limit: int | None = None
) -> None:
    """Run `one` for up to `move_parallelism` agents at a time and, with `limit`, never for more than `limit`
    agents of one tenant at once (a rolling move: the router keeps serving on the others). After the first
    failure no further agent begins (those not begun keep running); the operation then fails with it, preferring
    a failed rollback over a completed one. A re-run resumes from the recorded plans. The lines each agent's
    thread logs name its tenant (`OpContext.about`)."""
    tenants = {split(agent_id)[0] for agent_id in agent_ids}
    gates = {tenant: threading.BoundedSemaphore(limit or len(agent_ids) or 1) for tenant in tenants}
    failed = threading.Event()

    def gated(agent_id: str) -> None:
        with gates[split(agent_id)[0]]:
            if failed.is_set():
                return
            try:
                with ctx.about(split(agent_id)[0]):
                    one(agent_id)
            except BaseException:
                if limit is not None:
                    failed.set()
                raise

    # ordinal first: one tenant's agents are spread over the queue, so waiting on its gate holds few threads
    ordered = sorted(agent_ids, key=lambda agent_id: (split(agent_id)[1], agent_id))
    with ThreadPoolExecutor(max_workers=max(1, fleet.settings.move_parallelism)) as pool:
        failures = [f.exception() for f in [pool.submit(gated, agent_id) for agent_id in ordered]]
    found = [failure for failure in failures if failure is not None]
    if found:
        raise next((failure for failure in found if isinstance(failure, RollbackFailed)), found[0])


def moved_rolling(fleet: Fleet, ctx: OpContext, agent_ids: set[str], one: Callable[[str], None]) -> None:
    """Preflight, then move `agent_ids` with at most `max_unavailable` of one tenant down at once.

    The preflight runs after every agent is placed (no capacity fails first): the store and the engines of every
    node a move leaves or goes to must answer in time. When a check fails nothing new is stopped: only agents an
    earlier run of this operation left mid-move are moved on (each finishes or rolls back), then the operation
    fails with the check's code."""
    limit = max_unavailable(fleet, ctx)
    plans = [plan for a in agent_ids if not ctx.is_done(a) and isinstance(plan := ctx.plan_of(a), MovePlan)]
    if plans:
        nodes = {p.from_node for p in plans} | {p.node for p in plans}
        try:
            preflight.nodes_reachable(fleet, nodes)
            preflight.store_reachable(fleet, split(min(agent_ids))[0])
        except PreflightFailed as refused:
            ctx.step("operation.refused", str(refused), code=refused.code)
            pending = {a for a in agent_ids if ctx.recalled("stopped_at", a) is not None and not ctx.is_done(a)}
            if pending:
                in_parallel(fleet, ctx, pending, one, limit)
            raise
        ctx.step("operation.preflight", f"the store and {len(nodes)} engines answer; every agent has a place")
    in_parallel(fleet, ctx, agent_ids, one, limit)


def strategy(fleet: Fleet, ctx: OpContext) -> str:
    """The operation's `strategy` parameter (warm | cold), else the `move_strategy` setting."""
    return str(ctx.params.get("strategy") or fleet.settings.move_strategy)


def move(fleet: Fleet, ctx: OpContext, tenant: Tenant, agent: Agent) -> None:
    """Move one agent to its planned generation and node; records its downtime (source stopped -> new one ready).

    Warm (`warm_up`): the new generation first follows the old one's replica; once it caught up the old one is
    stopped with its final sync proven, CURRENT moves and the follower is promoted (downtime: stop + the tail +
    the agent's start). Cold, or when the follower fails before anything stopped: stop, then start the new
    generation restoring in full. The strategy an agent took is recorded (`moved_by`, and `cold` when it fell
    back), so a re-run goes on the same way.

    Route on ready, replicate after: the downtime ends when the new generation answers `/readyz` (its row says
    `running`, so the router sends it requests), not when its first snapshot reached `gen-<g+1>/`; the move then
    waits for that first replica (`Fleet.await_replica`) before anything depends on it: removing the source's
    container and volume, and reporting the agent done. Why nothing is lost by that order:
    - every transaction the source acknowledged is in `gen-<g>/` before the cutover (`Fleet.stop` proved the final
      sync against the replica), and the new generation starts from exactly that (the follower applied up to the
      proven txid; a cold start restored it). Nothing acknowledged before the switch depends on `gen-<g+1>/`.
    - what gen g+1 acknowledges before its first snapshot is in no replica yet: the same asynchronous window every
      running agent has between its syncs (invariant 3). A `durability=replicated` tenant's writes still wait for
      their own sync. The window is longer only by the snapshot's upload, which grows with the database.
    - a fail-over (or any restart elsewhere) while CURRENT = g+1 and `gen-<g+1>/` is still empty restores gen g's
      proven replica (`Fleet.start` through `Fleet.restore_source`: an empty replica means its generation never
      synced, so its predecessor's is the newest there is), and the loss report is taken from that replica.
    - a restart of g+1 in place (its container exited) finds its database on its volume; only the source's
      volume is ever removed, and only after g+1's first replica is in the store.
    - a control plane killed between the switch and the first replica: the re-run finds the agent `running` on
      g+1 with `ready_at` recorded, skips the cutover (never rolls back past a generation that served) and only
      waits for the replica, then removes the source. If the replica does not come within `ready_timeout`, the
      operation fails with the agent serving and the source's container kept; a retry waits again.

    When anything fails after the old incarnation began to stop (its final sync, the new generation's start or
    promotion, until it is ready), the move rolls back (`roll_back`): the old incarnation serves again and the
    operation fails saying why. An agent a failed attempt left down (`failed`) is first started again in place: only
    a running incarnation can prove its final sync."""
    plan = ctx.plan_of(agent.id)
    if not isinstance(plan, MovePlan):
        raise OperationFailed(f"no move planned for agent {agent.id}")
    if ctx.is_done(agent.id):
        return
    if agent.state == AgentState.failed and agent.node is not None:
        fleet.reinstate(ctx, tenant, agent.ordinal, agent.generation, fleet.node(agent.node))
        ctx.step("agent.reinstated", f"gen {agent.generation} serves again on {agent.node}", agent=agent.ordinal)
        agent = fleet.agent(agent.tenant, agent.ordinal)
    # the new generation served already (an earlier run got that far): never roll back past its writes
    served = agent.generation == plan.generation and agent.state == AgentState.running
    source_up = agent.generation == plan.from_generation and agent.state != AgentState.retained
    if not served and source_up and ctx.recalled("stopped_at", agent.id) is None:
        warm_up(fleet, ctx, tenant, agent, plan)
    warm = ctx.recalled("moved_by", agent.id) == "warm" and ctx.recalled("cold", agent.id) is None
    if not (served and ctx.recalled("ready_at", agent.id) is not None):  # else routed already: only replicate
        _cut_over(fleet, ctx, tenant, agent, plan, warm=warm, source_up=source_up, served=served)
    fleet.finish_stop(ctx, agent.tenant, agent.ordinal, plan.from_generation, plan.from_node)
    node = fleet.node(plan.node)
    if warm and served:  # a re-run: the promotion that lowers it may have been cut short
        fleet.end_follower_allowance(ctx, tenant, agent.ordinal, plan.generation, node)
    # after the cutover slot: the snapshot upload is no part of the downtime the destination's pace learns from
    fleet.await_replica(ctx, agent.tenant, agent.ordinal, plan.generation, node)
    fleet.remove(ctx, agent.tenant, agent.ordinal, plan.from_generation, plan.from_node)
    ready_at = float(ctx.recalled("ready_at", agent.id))
    downtime = round(ready_at - float(ctx.recalled("stopped_at", agent.id)), 3)
    how = "warm" if warm else "cold"
    ctx.mark_done(agent.id, downtime_s=downtime, strategy=how)
    ctx.step(
        "agent.moved",
        f"{plan.from_node} -> {plan.node} ({how}), downtime {downtime}s",
        agent=agent.ordinal,
        downtime_s=downtime,
        strategy=how,
    )


def _cut_over(
    fleet: Fleet,
    ctx: OpContext,
    tenant: Tenant,
    agent: Agent,
    plan: MovePlan,
    *,
    warm: bool,
    source_up: bool,
    served: bool,
) -> None:
    """The downtime, under one of the destination's cutover slots: the source's proven stop, then the promotion
    (warm) or the start restoring in full (cold), until the new generation is ready and routed (`ready_at`). A
    failure before the new generation served rolls back."""
    with PACER.slot(plan.node, fleet.settings.move_parallelism):  # the downtime only: followers warm up unpaced
        try:
            if source_up:
                ctx.remember("stopped_at", time.time(), agent.id)
                record = fleet.stop(ctx, agent, drain=False, until_proof=True)  # its container may still be exiting
                ctx.remember("final_txid", int(record["txid"]), agent.id)
                fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.retained, url=None)
            if warm:
                txid = ctx.recalled("final_txid", agent.id)
                if txid is None:  # stopped by a run that predates this record: the proof is in the store
                    txid = int(
                        (fleet.storage.read_shutdown(agent.tenant, agent.ordinal, plan.from_generation) or {})["txid"]
                    )
                node = fleet.node(plan.node)
                fleet.promote(ctx, tenant, agent.ordinal, plan.generation, node, plan.from_generation, int(txid))
            else:
                node = fleet.node(plan.node)
                fleet.start(ctx, tenant, agent.ordinal, plan.generation, node, plan.from_generation, replicated=False)
        except LostLease:
            raise
        except Exception as exc:
            if ctx.recalled("stopped_at", agent.id) is None or served:
                raise
            roll_back(fleet, ctx, tenant, agent.ordinal, plan, exc)
        ctx.remember("ready_at", time.time(), agent.id)


def warm_up(fleet: Fleet, ctx: OpContext, tenant: Tenant, agent: Agent, plan: MovePlan) -> None:
    """Before the source stops: start the new generation as a follower on the target and wait until it caught
    up, or record the fall-back to cold (`cold`, why) after removing the follower. Nothing here stops or fences
    the source, so any failure leaves it serving.

    Re-running is safe: the strategy is recorded (`moved_by`) before the follower exists (a re-run finds the
    follower by name and reuses it), the fall-back is recorded only after the follower is gone, and a run that
    recorded it removes the follower again (a no-op when it is gone) before the cold start reuses its name. A
    follower whose rebuilt copy failed its integrity check fails the move instead (ReplicaCorrupt): the source
    keeps serving, and a cold start would restore the same corrupt replica."""
    chosen = ctx.remember("moved_by", strategy(fleet, ctx), agent.id)
    if chosen != "warm":
        return
    node = fleet.node(plan.node)
    if ctx.recalled("cold", agent.id) is not None:
        fleet.remove(ctx, agent.tenant, agent.ordinal, plan.generation, plan.node)
        return
    try:
        fleet.follow(ctx, tenant, agent.ordinal, plan.generation, node, plan.from_generation)
        fleet.catch_up(ctx, agent.tenant, agent.ordinal, plan.generation, node, plan.from_generation)
    except LostLease:
        raise
    except ReplicaCorrupt as exc:  # a cold move would restore the same replica: stop nothing, say so loudly
        fleet.remove(ctx, agent.tenant, agent.ordinal, plan.generation, plan.node)
        ctx.step("agent.replica_corrupt", str(exc), agent=agent.ordinal, generation=plan.from_generation)
        raise
    except Exception as exc:
        why = str(exc) if isinstance(exc, OperationFailed) else f"{type(exc).__name__}: {exc}"
        fleet.remove(ctx, agent.tenant, agent.ordinal, plan.generation, plan.node)
        ctx.remember("cold", why, agent.id)
        ctx.step("agent.warm_fallback", f"follower failed ({why}): moving cold", agent=agent.ordinal)


def roll_back(fleet: Fleet, ctx: OpContext, tenant: Tenant, ordinal: int, plan: MovePlan, cause: Exception) -> NoReturn:
    """Put the old incarnation back: remove whatever the new generation left, give CURRENT back, start the old
    container again (same generation, volume and node), retrying until `rollback_timeout` (a frozen store may come
    back). Always raises: RolledBack when it serves again, RollbackFailed (the agent marked `failed`) when not.

    Re-running is safe: `Fleet.reinstate` is (see there)."""
    agent_id = f"{tenant.name}/{ordinal}"
    why = str(cause) if isinstance(cause, OperationFailed) else f"{type(cause).__name__}: {cause}"
    g, home = plan.from_generation, plan.from_node
    ctx.step(
        "agent.rolling_back",
        f"move to {plan.node} failed ({why}): starting gen {g} again on {home}",
        agent=ordinal,
        cause=getattr(cause, "code", type(cause).__name__),
    )
    last: Exception | None = None
    for _ in poll(fleet.settings.rollback_timeout, 1.0):
        try:
            fleet.reinstate(ctx, tenant, ordinal, g, fleet.node(home), (plan.generation, plan.node))
            break
        except LostLease:
            raise
        except Exception as exc:
            last = exc
            ctx.log.warning("agent.rollback_retry", agent=ordinal, error=f"{type(exc).__name__}: {exc}")
    else:
        fleet.set_agent(tenant.name, ordinal, state=AgentState.failed, url=None)
        detail = "no attempt finished" if last is None else f"{type(last).__name__}: {last}"
        ctx.step("agent.rollback_failed", f"gen {g} could not be started again on {home}: {detail}", agent=ordinal)
        raise RollbackFailed(
            f"{agent_id}: move to {plan.node} failed ({why}), and gen {g} did not start again on {home} within "
            f"{fleet.settings.rollback_timeout:g}s ({detail}); it is marked failed, a retry starts it first"
        )
    ctx.step("agent.rolled_back", f"gen {g} serves again on {home}", agent=ordinal, generation=g, node=home)
    raise RolledBack(f"{agent_id}: move to {plan.node} failed ({why}); rolled back: gen {g} serves again on {home}")


def run_evacuate(fleet: Fleet, ctx: OpContext) -> None:
    tenant = fleet.tenant(str(ctx.tenant))
    to_node, from_node = ctx.params.get("to_node"), ctx.params.get("from_node")
    chosen = ctx.planned()
    for agent in fleet.agents(tenant.name):
        left_down = agent.state == AgentState.failed and agent.node is not None and agent.ordinal < tenant.agents
        if (
            (agent.state == AgentState.running or left_down)
            and agent.node != to_node
            and from_node in (None, agent.node)
        ):
            chosen.add(agent.id)
    plan_moves(fleet, ctx, chosen, to_node)
    moved_rolling(fleet, ctx, chosen, lambda agent_id: move(fleet, ctx, tenant, fleet.agent(*split(agent_id))))
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
    moved_rolling(fleet, ctx, planned, one)
    with Session(fleet.engine) as session:
        row = session.get(Node, node)
        if row is not None:
            row.state = NodeState.cordoned
            session.add(row)
            session.commit()
    ctx.set_result("moved", len(planned))
