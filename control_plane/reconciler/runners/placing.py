"""Placement as an operation sees it: a node for one more agent, or the operation fails saying why."""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from control_plane.db.models import Tenant
from control_plane.errors import NoCapacityLeft
from control_plane.fleet.incarnations import Fleet
from control_plane.fleet.placement import NoCapacity


def place(
    fleet: Fleet, tenant: Tenant, exclude: AbstractSet[str] = frozenset(), reserved: Sequence[tuple[str, Tenant]] = ()
) -> str:
    try:
        return fleet.place(tenant, exclude, reserved).name
    except NoCapacity as exc:
        raise NoCapacityLeft(str(exc)) from None


def split(agent_id: str) -> tuple[str, int]:
    """`"acme/2"` -> `("acme", 2)`."""
    tenant, ordinal = agent_id.rsplit("/", 1)
    return tenant, int(ordinal)
