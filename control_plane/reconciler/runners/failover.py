"""Fail over: restart every agent of a node that went down elsewhere, from its last replica, as a new generation.

Nothing on the dead node can be stopped or proven: CURRENT moves to g+1 first and g's key is revoked, so a
zombie that comes back can neither keep its fence nor write; what it had not replicated is lost, and the result
says what the store can prove (`loss_report`: the replica's last txid and its time, and "writes acknowledged
after T may be lost", T being the last sync the store confirmed). Re-running is
safe for the same reasons as a move: the plan is recorded, starting reuses the container, done agents are skipped.

The new generation starts only after the old agent's lease ran out (DESIGN invariant 6, issue 11): CURRENT moves
at T (recorded, so a re-run waits for the same deadline), and gen g+1 starts at T + the agents' lease timeout
+ 1 s. By then the old agent, frozen or cut off, acknowledges nothing more by its own clock: whatever it
acknowledged is in the replica g+1 restores from, or inside the reported replication window."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from control_plane.db.models import Agent, AgentState
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
    # measured before anything changes (the row is still gen `old`'s) and kept, so a re-run reports the same
    # gen `old` moved here and its node went before its first replica: its predecessor's is what restores
    restorable = fleet.restore_source(agent.tenant, agent.ordinal, old)
    loss = ctx.remember("loss", loss_report(fleet, agent, restorable, declared_down), agent_id)
    fleet.set_agent(agent.tenant, agent.ordinal, state=AgentState.lost)
    fence_out(fleet.credentials, agent.tenant, agent.ordinal, old)
    wait_out_lease(fleet, ctx, agent_id, agent.tenant, agent.ordinal, plan.generation)
    fleet.start(ctx, tenant, agent.ordinal, plan.generation, fleet.node(plan.node), old)
    txid, window = loss["last_replicated_txid"], loss["loss_window_s"]
    ctx.mark_done(agent_id, restored_txid=txid, loss_window_s=window, loss=loss)
    ctx.step(
        "agent.failed_over",
        f"{node} is down: gen {plan.generation} on {plan.node} from gen {old}'s replica at txid {txid}; "
        f"{loss['statement']}",
        agent=agent.ordinal,
        restored_txid=txid,
        loss_window_s=window,
        may_be_lost_after=loss["may_be_lost_after"],
    )


def loss_report(fleet: Fleet, agent: Agent, old: int, declared_down: float) -> dict[str, Any]:
    """What a fail-over of generation `old` can prove about its loss, from the store:

    - `last_replicated_txid` / `last_replicated_at`: the replica's newest transaction and when the store received
      it (what the new generation restores);
    - `confirmed_synced_at`: the store-side lag measurement's last confirmed sync (control_plane/observer/lag.py),
      before which every write the agent acknowledged is in that replica; None when never confirmed;
    - `may_be_lost_after`: writes acknowledged after this moment may be lost (the confirmed sync, else, unproven,
      the store's time of the newest replica file), and `loss_window_s` from it to the node's declared death;
    - `lost_txids_at_least`: only when the agent reported committing more than the replica holds (a proven loss);
      nothing is claimed when it cannot be known;
    - `unconfirmed_commits_at_last_probe` / `last_probed_at`: the runtime's own count of commits no sync had
      confirmed when the health monitor last heard from it (they may have reached the replica since: at risk,
      not lost).
    Reads only: safe to call again (the fail-over records the first answer)."""
    txid, written_at = fleet.storage.replica_position(agent.tenant, agent.ordinal, old)
    measured = agent.generation == old
    confirmed = agent.synced_at if measured and agent.synced_at is not None else None
    local = agent.local_txid if measured else None
    after = confirmed if confirmed is not None else written_at
    report: dict[str, Any] = {
        "last_replicated_txid": txid,
        "last_replicated_at": written_at,
        "confirmed_synced_at": confirmed,
        "may_be_lost_after": after,
        "loss_window_s": None if after is None else round(max(0.0, declared_down - after), 3),
        "agent_reported_txid": local,
        "unconfirmed_commits_at_last_probe": agent.unconfirmed_commits if measured else None,
        "last_probed_at": agent.probed_at if measured else None,
    }
    if local is not None and local > txid:
        report["lost_txids_at_least"] = local - txid
    if after is None:
        report["statement"] = "the replica has no transaction: everything the agent acknowledged may be lost"
    else:
        moment = dt.datetime.fromtimestamp(after, dt.UTC).isoformat(timespec="milliseconds")
        proof = "the last sync the store confirmed" if confirmed is not None else "unconfirmed: the newest replica file"
        report["statement"] = f"writes acknowledged after {moment} may be lost ({proof})"
        if "lost_txids_at_least" in report:
            report["statement"] += f"; at least {report['lost_txids_at_least']} txids the agent reported are not in it"
    unconfirmed = report["unconfirmed_commits_at_last_probe"]
    if unconfirmed and agent.probed_at is not None:
        probed = dt.datetime.fromtimestamp(agent.probed_at, dt.UTC).isoformat(timespec="milliseconds")
        report["statement"] += f"; at {probed} the agent counted {unconfirmed} commits no sync had confirmed"
    return report


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
    in_parallel(fleet, ctx, agent_ids, lambda agent_id: fail_over(fleet, ctx, agent_id, node, declared_down))
    ctx.set_result("moved", len(ctx.done()))
