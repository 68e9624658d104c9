"""Delete a tenant: stop and remove its incarnations, keep (or, with `purge`, delete) its replicas, drop its rows.

Re-running is harmless: stopping an exited incarnation and removing a removed one are no-ops, a purge finds
nothing left to delete, and the rows go last."""

from __future__ import annotations

from sqlmodel import Session, col, delete

from control_plane.db.models import PLACED_STATES, Agent, AgentState, Tenant, TenantState
from control_plane.errors import OperationFailed, PreflightFailed
from control_plane.fleet import preflight
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.context import OpContext


def run_delete(fleet: Fleet, ctx: OpContext) -> None:
    tenant = str(ctx.tenant)
    placed = [a for a in fleet.agents(tenant) if a.node is not None and a.generation and a.state in PLACED_STATES]
    if placed:  # preflight: their final syncs need the store, their stops their engines
        try:
            preflight.nodes_reachable(fleet, {str(a.node) for a in placed})
            preflight.store_reachable(fleet, tenant)
        except PreflightFailed as refused:
            ctx.step("operation.refused", str(refused), code=refused.code)
            raise
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
