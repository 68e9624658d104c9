"""Fail over: restart every agent of a node that went down elsewhere, from its last replica, as a new generation.

Nothing on the dead node can be stopped or proven: CURRENT moves to g+1 first and g's key is revoked, so a
zombie that comes back can neither keep its fence nor write; what it had not replicated is lost, and the result
says how much (the replica's txid and the age of its last sync when the node was declared down). Re-running is
safe for the same reasons as a move: the plan is recorded, starting reuses the container, done agents are skipped.

The new generation starts only after the old agent's lease ran out (DESIGN invariant 6, issue 11): CURRENT moves
at T (recorded, so a re-run waits for the same deadline), and gen g+1 starts at T + the agents' lease timeout
+ 1 s. By then the old agent, frozen or cut off, acknowledges nothing more by its own clock: whatever it
acknowledged is in the replica g+1 restores from, or inside the reported replication window."""

from __future__ import annotations

import time

from control_plane.db.models import AgentState
from control_plane.errors import OperationFailed
from control_plane.fleet.fence import advance_current, fence_out
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.planning import MovePlan
from control_plane.reconciler.runners.move import in_parallel, placed_on, plan_moves
from control_plane.reconciler.runners.placing import split


def fail_over(fleet: Fleet, ctx: OpContext, agent_id: str, node: str, declared_down: float) -> None:
    if ctx.is_done(agent_id):
        return
    agent = fleet.agent(*split(agent_id))
    tenant = fleet.tenant(agent.tenant)
    plan = ctx.plan_of(agent_id)
    if not isinstance(plan, MovePlan):
        raise OperationFailed(f"no fail-over planned for agent {agent_id}")
    old = plan.from_generation
    txid, synced_at = fleet.storage.replica_position(agent.tenant, agent.ordinal, old)
    # the agent's last reported local txid, if it was probed as this generation: a lower bound of the loss
    known_local = agent.local_txid if agent.generation == old and agent.local_txid is not None else None
    lost_at_least = None if known_local is None else max(0, known_local - txid)
    fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.lost)
    fence_out(fleet.credentials, agent.tenant, agent.ordinal, old)
    wait_out_lease(fleet, ctx, agent_id, agent.tenant, agent.ordinal, plan.generation)
    fleet.start(ctx, tenant, agent.ordinal, plan.generation, fleet.node(plan.node), old)
    window = None if synced_at is None else round(max(0.0, declared_down - synced_at), 3)
    ctx.mark_done(agent_id, restored_txid=txid, loss_window_s=window, lost_txids_at_least=lost_at_least)
    ctx.step(
        "agent.failed_over",
        f"{node} is down: gen {plan.generation} on {plan.node} from gen {old}'s replica at txid {txid}; "
        f"writes in the last {window}s before the node was declared down may be lost "
        f"(its last probe saw local txid {known_local})",
        agent=agent.ordinal,
        restored_txid=txid,
        loss_window_s=window,
    )


def wait_out_lease(fleet: Fleet, ctx: OpContext, agent_id: str, tenant: str, ordinal: int, generation: int) -> None:
    """Move CURRENT to `generation` (time T, recorded on the first run) and wait until T + lease + margin, so the
    old agent's lease has run out before its successor can acknowledge anything. Re-running waits only for what is
    left of the recorded deadline."""
    advance_current(fleet.storage, tenant, ordinal, generation)
    written_at = float(ctx.remember("current_written_at", time.time(), agent_id))
    lease, margin = fleet.settings.agent_lease_timeout, fleet.settings.agent_lease_margin
    remaining = written_at + lease + margin - time.time()
    if remaining > 0:
        time.sleep(remaining)
    ctx.step(
        "agent.lease_waited",
        f"CURRENT moved to gen {generation}; waited out the old agent's {lease}s lease (+{margin}s) "
        f"before starting it ({max(0.0, round(remaining, 3))}s left to wait)",
        agent=ordinal,
        generation=generation,
        current_written_at=round(written_at, 3),
        not_before=round(written_at + lease + margin, 3),
        waited_s=max(0.0, round(remaining, 3)),
    )


def run_failover(fleet: Fleet, ctx: OpContext) -> None:
    node = str(ctx.node)
    declared_down = float(ctx.remember("declared_down_at", time.time()))
    agent_ids = {agent.id for agent in placed_on(fleet, node)} | ctx.planned()
    plan_moves(fleet, ctx, agent_ids, None)
    in_parallel(fleet, agent_ids, lambda agent_id: fail_over(fleet, ctx, agent_id, node, declared_down))
    ctx.set_result("moved", len(ctx.done()))
