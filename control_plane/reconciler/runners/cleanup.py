"""Cleanup: remove a tenant's stale containers (and their volumes) from one node (queued by the health monitor).
Their keys are left alone, as before: a zombie's was revoked by its fail-over, an older generation's by its move.

It runs in the tenant's turn (claims never run two operations of one tenant at once), so it cannot race a move
that is about to remove the same container. Re-running is harmless: it lists again, and what is gone is gone."""

from __future__ import annotations

from control_plane.drivers.base import EngineUnreachable
from control_plane.errors import OperationFailed
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.health import is_stale


def run_cleanup(fleet: Fleet, ctx: OpContext) -> None:
    tenant, node = str(ctx.tenant), fleet.node(str(ctx.node))
    driver = fleet.driver(node)
    try:
        found = [i for i in driver.list_managed(fleet=fleet.storage.bucket) if i.tenant == tenant]
    except EngineUnreachable as exc:
        raise OperationFailed(f"cannot list {node.name}: {exc}") from None
    agents = {agent.ordinal: agent for agent in fleet.agents(tenant)}
    removed = 0
    for incarnation in found:
        if is_stale(incarnation, agents.get(incarnation.agent), node.name):
            try:
                driver.remove(incarnation.name)
            except EngineUnreachable as exc:
                raise OperationFailed(f"cannot remove {incarnation.name}: {exc}") from None
            ctx.step(
                "agent.stale_removed",
                f"{incarnation.name} ({incarnation.status}) removed",
                agent=incarnation.agent,
                node=node.name,
            )
            removed += 1
    ctx.set_result("removed", removed)
