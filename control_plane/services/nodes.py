"""Nodes: register (after the engine answers), cordon, drain (an operation), remove. A refused request changes
nothing. The engine is reached only through the `EngineProbe` the caller hands in: no driver is built here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from control_plane.db.models import (
    DEFAULT_RUNTIME,
    PLACED_STATES,
    Agent,
    MoveStrategy,
    Node,
    NodeCreate,
    NodePublic,
    NodeState,
    Operation,
    OperationKind,
    Page,
    Tenant,
    plain,
)
from control_plane.drivers.base import EngineUnreachable
from control_plane.errors import EngineUnreachableError, NodeExists, NodeNotEmpty, NodeNotFound, NodeNotReady
from control_plane.fleet.placement import reserved_on
from control_plane.services.operations import event, queue
from control_plane.services.paging import DEFAULT_LIMIT, by_name

EngineProbe = Callable[[NodeCreate], list[str]]
"""Pings the engine with the node's own URL and credentials and returns the OCI runtimes it offers; raises
EngineUnreachable when it does not answer."""


def find_node(session: Session, name: str) -> Node:
    node = session.get(Node, name)
    if node is None:
        raise NodeNotFound(f"no node named {name!r}")
    return node


def node_public(session: Session, node: Node) -> NodePublic:
    return _public(node, _loads(session, [node.name]).get(node.name, (0, 0)))


def _public(node: Node, load: tuple[int, int]) -> NodePublic:
    return NodePublic(
        **node.model_dump(exclude={"missed_heartbeats", "pool_memory_mb", "pool_lock_token", "pool_locked_until"}),
        agents=load[0],
        memory_mb_used=load[1],
    )


def _loads(
    session: Session, names: list[str] | None, between: tuple[str | None, str] | None = None
) -> dict[str, tuple[int, int]]:
    """(agents placed, memory MiB they reserve) per node (of `names`, of the names in `between` = (after, last],
    after None: from the first; or of every node), in one grouped query."""
    if names == []:
        return {}
    query = (
        select(Agent.node, func.count(), func.coalesce(func.sum(Tenant.memory_mb), 0))
        .join(Tenant, col(Agent.tenant) == col(Tenant.name))
        .where(col(Agent.state).in_(PLACED_STATES))
        .group_by(col(Agent.node))
    )
    if names is not None:
        query = query.where(col(Agent.node).in_(names))
    if between is not None:  # a range the index on agent.node serves, whatever the planner knows of the table
        if between[0] is not None:
            query = query.where(col(Agent.node) > between[0])
        query = query.where(col(Agent.node) <= between[1])
    return {str(node): (int(count), int(memory)) for node, count, memory in session.exec(query)}


def register_node(session: Session, body: NodeCreate, probe: EngineProbe) -> NodePublic:
    if session.get(Node, body.name) is not None:
        raise NodeExists(f"node {body.name!r} is already registered")
    try:
        runtimes = probe(body) or [DEFAULT_RUNTIME.value]  # a probe that cannot tell: the default every engine has
    except EngineUnreachable as exc:  # also a refused URL: insecure_engine_url, engine_url_scheme, engine_tls_invalid
        error = EngineUnreachableError(str(exc))
        error.code = exc.code
        raise error from None
    node = Node.model_validate(body, update={"last_seen_at": time.time(), "runtimes": runtimes})
    session.add(node)
    runs = ", ".join(runtimes)
    event(session, "node.registered", f"{body.engine_url}, {body.capacity_agents} agents, {runs}", node=body.name)
    try:
        session.commit()
    except IntegrityError:  # a concurrent registration of the same name won the race
        session.rollback()
        raise NodeExists(f"node {body.name!r} is already registered") from None
    return node_public(session, node)


_NODE_LOADS = ("agents", "memory_mb_used")  # `NodePublic`'s fields counted from the agents, not columns
_NODE_PUBLIC_COLUMNS = tuple(name for name in NodePublic.model_fields if name not in _NODE_LOADS)


def node_rows(
    session: Session, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of nodes by name as the API shows it (`NodePublic`'s JSON, as dicts in its field order), and the next
    page's cursor: two queries whatever the page size (the page's columns, then the loads of the nodes in its
    name range), read as plain rows, no model built per row."""
    page, after, next_cursor = by_name(session, Node.__table__, _NODE_PUBLIC_COLUMNS, "nodes", limit, cursor)  # type: ignore[attr-defined]
    if not page:
        return [], None
    loads = _loads(session, None, (after, page[-1]["name"]))
    for node in page:
        node.update(zip(_NODE_LOADS, loads.get(node["name"], (0, 0)), strict=True))
    return [{name: plain(node[name]) for name in NodePublic.model_fields} for node in page], next_cursor


def list_nodes(session: Session, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[NodePublic]:
    """Nodes by name, `limit` at a time, with their load: two queries whatever the page size (`node_rows`, as
    models; the API answers with the rows themselves)."""
    items, next_cursor = node_rows(session, limit, cursor)
    return Page(items=[NodePublic.model_validate(item) for item in items], next_cursor=next_cursor)


def all_nodes(session: Session) -> list[NodePublic]:
    """Every node with its load, for the dashboard's overview (two queries)."""
    nodes = session.exec(select(Node).order_by(col(Node.name))).all()
    loads = _loads(session, None)
    return [_public(node, loads.get(node.name, (0, 0))) for node in nodes]


def get_node(session: Session, name: str) -> NodePublic:
    return node_public(session, find_node(session, name))


def set_node_state(session: Session, name: str, state: NodeState) -> NodePublic:
    """Cordon or uncordon. Idempotent: setting the state a node already has changes nothing."""
    node = find_node(session, name)
    if node.state == NodeState.draining and state == NodeState.ready:
        raise NodeNotReady(f"node {name} is draining; wait for the drain operation to finish")
    if node.state != state:
        node.state = state
        session.add(node)
        event(session, f"node.{state.value}", f"node is {state.value}", node=name)
        session.commit()
    return node_public(session, node)


def drain_node(session: Session, name: str, strategy: MoveStrategy | None = None) -> Operation:
    node = find_node(session, name)
    node.state = NodeState.draining
    session.add(node)
    op = queue(session, OperationKind.drain, node=name, **({"strategy": strategy.value} if strategy else {}))
    session.commit()
    return op


def remove_node(session: Session, name: str) -> None:
    node = find_node(session, name)
    placed = session.exec(select(Agent).where(Agent.node == name).where(col(Agent.state).in_(PLACED_STATES))).all()
    if placed:
        raise NodeNotEmpty(f"node {name} still runs {len(placed)} agents; drain it first")
    planned = reserved_on(session, name)
    if planned:
        raise NodeNotEmpty(f"node {name} has {planned} agents planned onto it by unfinished operations; wait for them")
    session.delete(node)
    event(session, "node.removed", "node removed", node=name)
    session.commit()
