"""Tenants: validate against the fleet, change desired state, queue the operation that gets there. A refused
request changes nothing; nothing here touches an engine or object storage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select as columns  # sqlmodel's select builds ORM objects; this reads rows
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from control_plane.db.models import (
    AGENT_PUBLIC_COLUMNS,
    PLACED_STATES,
    Agent,
    AgentPublic,
    AgentState,
    EvacuateRequest,
    NodeState,
    Operation,
    OperationKind,
    Page,
    Tenant,
    TenantCreate,
    TenantPublic,
    TenantState,
    agent_as_shown,
    plain,
    worst_replication,
)
from control_plane.drivers.images import check_bundle
from control_plane.errors import (
    NoCapacityError,
    NodeLacksRuntime,
    NodeNotReady,
    RuntimeUnavailableError,
    TenantBusy,
    TenantExists,
    TenantNotFound,
)
from control_plane.fleet.placement import NoCapacity, RuntimeUnavailable, choose_node, node_loads
from control_plane.services.nodes import find_node
from control_plane.services.operations import queue
from control_plane.services.paging import DEFAULT_LIMIT, by_name


def find_tenant(session: Session, name: str) -> Tenant:
    tenant = session.get(Tenant, name)
    if tenant is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return tenant


def tenant_public(session: Session, tenant: Tenant) -> TenantPublic:
    return _public(tenant, _agents_of(session, [tenant.name]).get(tenant.name, []))


def _public(tenant: Tenant, agents: list[AgentPublic]) -> TenantPublic:
    return TenantPublic(**tenant.model_dump(exclude={"wake_agents", "admin_token"}), placements=agents)


def _agents_of(session: Session, names: list[str]) -> dict[str, list[AgentPublic]]:
    """The agents of these tenants by ordinal, in one query, read as plain rows: a page's 400 agents cost a few
    milliseconds this way, against tens as ORM objects."""
    found: dict[str, list[AgentPublic]] = {}
    if names:
        table = Agent.__table__  # type: ignore[attr-defined]
        shown = columns(*(table.c[name] for name in AGENT_PUBLIC_COLUMNS))
        query = shown.where(table.c.tenant.in_(names)).order_by(table.c.tenant, table.c.ordinal)
        result = session.connection().execute(query)
        keys = list(result.keys())
        for row in result:
            agent = dict(zip(keys, row, strict=True))
            found.setdefault(agent["tenant"], []).append(AgentPublic.from_columns(agent))
    return found


def _check_capacity(session: Session, tenant: str, memory_mb: int, count: int, runtime: str) -> None:
    """Refuse up front when `count` more agents of this size and runtime cannot fit anywhere (the reason names
    each node)."""
    loads = node_loads(session, tenant)
    try:
        for _ in range(count):
            node = choose_node(loads.values(), tenant, memory_mb, runtime=runtime)
            loads[node.name] = loads[node.name].plus(memory_mb, True)
    except RuntimeUnavailable as exc:
        raise RuntimeUnavailableError(str(exc)) from None
    except NoCapacity as exc:
        raise NoCapacityError(str(exc)) from None


def create_tenant(session: Session, body: TenantCreate) -> Operation:
    if session.get(Tenant, body.name) is not None:
        raise TenantExists(f"tenant {body.name!r} already exists")
    check_bundle(body.bundle)
    _check_capacity(session, body.name, body.memory_mb, body.agents, body.runtime)
    session.add(Tenant.model_validate(body))
    op = queue(session, OperationKind.provision, tenant=body.name, agents=body.agents)
    try:
        session.commit()
    except IntegrityError:  # a concurrent create of the same name won the race: the same answer as a late one
        session.rollback()
        raise TenantExists(f"tenant {body.name!r} already exists") from None
    return op


# what `TenantPublic` shows of a tenant's columns, in its field order (`placements` is built from the agents, and
# the computed `replication` goes last)
_TENANT_PUBLIC_COLUMNS = tuple(name for name in TenantPublic.model_fields if name != "placements")


def tenant_rows(
    session: Session, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of tenants by name as the API shows it (`TenantPublic`'s JSON, as dicts in its field order), and the
    next page's cursor: two queries whatever the page size, read as plain rows, no model built per row. The agents
    are read by the page's name range (after the cursor, up to its last tenant): an index range on
    (tenant, ordinal) whatever the planner knows of the table (a list of 100 names was a sequential scan of every
    agent on PostgreSQL before its first ANALYZE)."""
    page, after, next_cursor = by_name(session, Tenant.__table__, _TENANT_PUBLIC_COLUMNS, "tenants", limit, cursor)  # type: ignore[attr-defined]
    if not page:
        return [], None
    items = []
    for tenant in page:
        tenant["placements"] = []
        items.append({name: plain(tenant[name]) for name in TenantPublic.model_fields})  # in its field order
    placements = {item["name"]: item["placements"] for item in items}
    agent = Agent.__table__  # type: ignore[attr-defined]
    query = columns(*(agent.c[name] for name in AGENT_PUBLIC_COLUMNS)).where(agent.c.tenant <= items[-1]["name"])
    if after is not None:
        query = query.where(agent.c.tenant > after)
    for row in session.connection().execute(query.order_by(agent.c.tenant, agent.c.ordinal)):
        shown = placements.get(row[0])  # row[0]: the agent's tenant (one without its row is not shown)
        if shown is not None:
            shown.append(agent_as_shown(dict(zip(AGENT_PUBLIC_COLUMNS, row, strict=True))))
    for item in items:  # TenantPublic's computed field, last
        running = (agent["replication"] for agent in item["placements"] if agent["state"] == AgentState.running)
        item["replication"] = plain(worst_replication(running))
    return items, next_cursor


def list_tenants(session: Session, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[TenantPublic]:
    """Tenants by name, `limit` at a time, each with its agents: two queries whatever the page size (`tenant_rows`,
    as models; the API answers with the rows themselves)."""
    items, next_cursor = tenant_rows(session, limit, cursor)
    return Page(items=[TenantPublic.model_validate(item) for item in items], next_cursor=next_cursor)


def get_tenant(session: Session, name: str) -> TenantPublic:
    return tenant_public(session, find_tenant(session, name))


def _active(session: Session, name: str) -> Tenant:
    tenant = find_tenant(session, name)
    if tenant.state == TenantState.deleting:
        raise TenantBusy(f"tenant {name} is being deleted")
    return tenant


def scale_tenant(session: Session, name: str, agents: int) -> Operation:
    tenant = _active(session, name)
    running = len(
        session.exec(select(Agent).where(Agent.tenant == name).where(col(Agent.state).in_(PLACED_STATES))).all()
    )
    if agents > running:
        _check_capacity(session, name, tenant.memory_mb, agents - running, tenant.runtime)
    kind = OperationKind.hibernate if agents == 0 else OperationKind.scale
    if agents == 0 and tenant.agents:
        tenant.wake_agents = tenant.agents
    tenant.agents = agents
    tenant.state = TenantState.hibernated if agents == 0 else TenantState.active
    session.add(tenant)
    op = queue(session, kind, tenant=name, agents=agents)
    session.commit()
    return op


def hibernate_tenant(session: Session, name: str) -> Operation:
    return scale_tenant(session, name, 0)


def wake_tenant(session: Session, name: str) -> Operation:
    tenant = _active(session, name)
    agents = tenant.agents or tenant.wake_agents or 1
    _check_capacity(session, name, tenant.memory_mb, agents, tenant.runtime)
    tenant.agents, tenant.state = agents, TenantState.active
    session.add(tenant)
    op = queue(session, OperationKind.wake, tenant=name, agents=agents)
    session.commit()
    return op


def evacuate_tenant(session: Session, name: str, body: EvacuateRequest) -> Operation:
    tenant = _active(session, name)
    if body.to_node is not None:
        target = find_node(session, body.to_node)
        if target.state != NodeState.ready:
            raise NodeNotReady(f"node {target.name} is {target.state.value}; evacuate to a ready node")
        if tenant.runtime not in (target.runtimes or []):
            raise NodeLacksRuntime(
                f"node {target.name} has no {tenant.runtime} runtime (it has {', '.join(target.runtimes or [])})"
            )
    if body.from_node is not None:
        find_node(session, body.from_node)
    params: dict[str, Any] = {"to_node": body.to_node, "from_node": body.from_node}
    if body.max_unavailable is not None:
        params["max_unavailable"] = body.max_unavailable
    if body.strategy is not None:
        params["strategy"] = body.strategy.value
    op = queue(session, OperationKind.evacuate, tenant=name, **params)
    session.commit()
    return op


def delete_tenant(session: Session, name: str, purge: bool) -> Operation:
    tenant = find_tenant(session, name)
    tenant.state = TenantState.deleting
    session.add(tenant)
    op = queue(session, OperationKind.delete, tenant=name, purge=purge)
    session.commit()
    return op
