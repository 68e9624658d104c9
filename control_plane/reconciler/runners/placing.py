"""Placement as an operation sees it: a node for one more agent, reserved in the transaction that records the
agent's plan, or the operation fails saying why."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet

from sqlmodel import Session

from control_plane.db.models import Agent, Tenant
from control_plane.errors import NoCapacityLeft
from control_plane.fleet import placement
from control_plane.fleet.incarnations import Fleet
from control_plane.fleet.placement import NoCapacity
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.planning import Plan


def place(fleet: Fleet, tenant: Tenant, exclude: AbstractSet[str] = frozenset()) -> str:
    try:
        return fleet.place(tenant, exclude).name
    except NoCapacity as exc:
        raise NoCapacityLeft(str(exc)) from None


def planned(
    fleet: Fleet,
    ctx: OpContext,
    agent: Agent,
    tenant: Tenant,
    make: Callable[[Callable[[], str]], Plan],
    exclude: AbstractSet[str] = frozenset(),
) -> Plan:
    """`ctx.plan` for `agent`: `make(place)` plans it, and the plan is recorded only with its node reserved in the
    same transaction (`placement.reserve`). Two operations placing at once therefore never both take a node's last
    place: the later one finds the node full (or no longer ready) and places again. A node placement chose must
    still have room then; a kept agent, one started again in place and an explicit target (`evacuate --to`) are
    reserved as they are (while the operation runs, the agent's row holds its place whatever its state).
    Re-running is safe: a recorded plan is returned as it is (its reservation stays until the operation ends)."""
    chosen: list[str] = []

    def place_anew() -> str:
        chosen.append(place(fleet, tenant, exclude))
        return chosen[-1]

    def reserve(session: Session, plan: Plan) -> bool:
        placed = bool(chosen) and chosen[-1] == plan.node
        return placement.reserve(session, agent.id, tenant, plan.node, ctx.id, within_capacity=placed)

    return ctx.plan(agent.id, lambda: make(place_anew), reserve)


def split(agent_id: str) -> tuple[str, int]:
    """`"acme/2"` -> `("acme", 2)`."""
    tenant, ordinal = agent_id.rsplit("/", 1)
    return tenant, int(ordinal)
