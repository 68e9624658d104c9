"""Nodes: register (after the engine answers), cordon, drain (an operation), remove. A refused request changes
nothing. The engine is reached only through the `EngineProbe` the caller hands in: no driver is built here."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from control_plane.db.models import (
    PLACED_STATES,
    Agent,
    Node,
    NodeCreate,
    NodePublic,
    NodeState,
    Operation,
    OperationKind,
    Tenant,
)
from control_plane.drivers.base import EngineUnreachable
from control_plane.drivers.runtimes import DEFAULT_RUNTIME
from control_plane.errors import EngineUnreachableError, NodeExists, NodeNotEmpty, NodeNotFound, NodeNotReady
from control_plane.services.operations import event, queue

EngineProbe = Callable[[NodeCreate], list[str]]
"""Pings the engine with the node's own URL and credentials and returns the OCI runtimes it offers; raises
EngineUnreachable when it does not answer."""


def find_node(session: Session, name: str) -> Node:
    node = session.get(Node, name)
    if node is None:
        raise NodeNotFound(f"no node named {name!r}")
    return node


def node_public(session: Session, node: Node) -> NodePublic:
    placed = session.exec(
        select(Agent, Tenant)
        .where(col(Agent.tenant) == col(Tenant.name))
        .where(Agent.node == node.name)
        .where(col(Agent.state).in_(PLACED_STATES))
    ).all()
    return NodePublic(
        **node.model_dump(exclude={"missed_heartbeats"}),
        agents=len(placed),
        memory_mb_used=sum(tenant.memory_mb for _, tenant in placed),
    )


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


def list_nodes(session: Session) -> list[NodePublic]:
    return [node_public(session, node) for node in session.exec(select(Node).order_by(col(Node.name)))]


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


def drain_node(session: Session, name: str) -> Operation:
    node = find_node(session, name)
    node.state = NodeState.draining
    session.add(node)
    op = queue(session, OperationKind.drain, node=name)
    session.commit()
    return op


def remove_node(session: Session, name: str) -> None:
    node = find_node(session, name)
    placed = session.exec(select(Agent).where(Agent.node == name).where(col(Agent.state).in_(PLACED_STATES))).all()
    if placed:
        raise NodeNotEmpty(f"node {name} still runs {len(placed)} agents; drain it first")
    session.delete(node)
    event(session, "node.removed", "node removed", node=name)
    session.commit()
