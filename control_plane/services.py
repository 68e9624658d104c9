"""What the API's routes do: validate against the fleet, change desired state, queue operations.

Nothing here touches an engine or object storage except the engine ping at node registration: long work is an
`Operation`, run by the reconciler. A refused request changes nothing."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, col, select

from control_plane.drivers import DockerDriver, EngineUnreachable
from control_plane.errors import (
    EngineUnreachableError,
    InvalidRequest,
    NoAgentRunning,
    NoCapacityError,
    NodeExists,
    NodeNotEmpty,
    NodeNotFound,
    NodeNotReady,
    OperationNotFound,
    TenantBusy,
    TenantExists,
    TenantNotFound,
    WorkflowNotFound,
)
from control_plane.models import (
    PLACED_STATES,
    Agent,
    AgentPublic,
    AgentState,
    EvacuateRequest,
    Event,
    EventPublic,
    Node,
    NodeCreate,
    NodePublic,
    NodeState,
    Operation,
    OperationKind,
    OperationPublic,
    OperationState,
    Tenant,
    TenantCreate,
    TenantPublic,
    TenantState,
)
from control_plane.pki import credential_set
from control_plane.placement import NoCapacity, choose_node, node_loads


def _event(session: Session, kind: str, message: str, **ids: Any) -> None:
    session.add(Event(kind=kind, message=message, **ids))


def _queue(
    session: Session, kind: OperationKind, *, tenant: str | None = None, node: str | None = None, **params: Any
) -> Operation:
    op = Operation(kind=kind, tenant=tenant, node=node, params=params)
    session.add(op)
    _event(session, f"operation.{kind.value}", f"{kind.value} queued", tenant=tenant, node=node, operation=op.id)
    return op


# -- nodes ----------------------------------------------------------------------------------------------------------


def _node(session: Session, name: str) -> Node:
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


def register_node(session: Session, body: NodeCreate, pki_dir: Path) -> NodePublic:
    if session.get(Node, body.name) is not None:
        raise NodeExists(f"node {body.name!r} is already registered")
    try:
        DockerDriver(body.engine_url, timeout=5, tls=credential_set(pki_dir, body.tls), insecure=body.insecure).ping()
    except EngineUnreachable as exc:  # also a refused URL: insecure_engine_url, engine_url_scheme, engine_tls_invalid
        error = EngineUnreachableError(str(exc))
        error.code = exc.code
        raise error from None
    node = Node.model_validate(body, update={"last_seen_at": time.time()})
    session.add(node)
    _event(session, "node.registered", f"{body.engine_url}, {body.capacity_agents} agents", node=body.name)
    session.commit()
    return node_public(session, node)


def list_nodes(session: Session) -> list[NodePublic]:
    return [node_public(session, node) for node in session.exec(select(Node).order_by(col(Node.name)))]


def get_node(session: Session, name: str) -> NodePublic:
    return node_public(session, _node(session, name))


def set_node_state(session: Session, name: str, state: NodeState) -> NodePublic:
    """Cordon or uncordon. Idempotent: setting the state a node already has changes nothing."""
    node = _node(session, name)
    if node.state == NodeState.draining and state == NodeState.ready:
        raise NodeNotReady(f"node {name} is draining; wait for the drain operation to finish")
    if node.state != state:
        node.state = state
        session.add(node)
        _event(session, f"node.{state.value}", f"node is {state.value}", node=name)
        session.commit()
    return node_public(session, node)


def drain_node(session: Session, name: str) -> Operation:
    node = _node(session, name)
    node.state = NodeState.draining
    session.add(node)
    op = _queue(session, OperationKind.drain, node=name)
    session.commit()
    return op


def remove_node(session: Session, name: str) -> None:
    node = _node(session, name)
    placed = session.exec(select(Agent).where(Agent.node == name).where(col(Agent.state).in_(PLACED_STATES))).all()
    if placed:
        raise NodeNotEmpty(f"node {name} still runs {len(placed)} agents; drain it first")
    session.delete(node)
    _event(session, "node.removed", "node removed", node=name)
    session.commit()


# -- tenants --------------------------------------------------------------------------------------------------------


def _tenant(session: Session, name: str) -> Tenant:
    tenant = session.get(Tenant, name)
    if tenant is None:
        raise TenantNotFound(f"no tenant named {name!r}")
    return tenant


def tenant_public(session: Session, tenant: Tenant) -> TenantPublic:
    agents = session.exec(select(Agent).where(Agent.tenant == tenant.name).order_by(col(Agent.ordinal))).all()
    return TenantPublic(
        **tenant.model_dump(exclude={"wake_agents"}),
        placements=[AgentPublic.model_validate(agent, from_attributes=True) for agent in agents],
    )


def _check_capacity(session: Session, tenant: str, memory_mb: int, count: int) -> None:
    """Refuse up front when `count` more agents of this size cannot fit anywhere (the reason names each node)."""
    loads = node_loads(session, tenant)
    try:
        for _ in range(count):
            node = choose_node(loads.values(), tenant, memory_mb)
            loads[node.name] = loads[node.name].plus(memory_mb, True)
    except NoCapacity as exc:
        raise NoCapacityError(str(exc)) from None


def create_tenant(session: Session, body: TenantCreate) -> Operation:
    if session.get(Tenant, body.name) is not None:
        raise TenantExists(f"tenant {body.name!r} already exists")
    _check_capacity(session, body.name, body.memory_mb, body.agents)
    session.add(Tenant.model_validate(body))
    op = _queue(session, OperationKind.provision, tenant=body.name, agents=body.agents)
    session.commit()
    return op


def list_tenants(session: Session) -> list[TenantPublic]:
    return [tenant_public(session, tenant) for tenant in session.exec(select(Tenant).order_by(col(Tenant.name)))]


def get_tenant(session: Session, name: str) -> TenantPublic:
    return tenant_public(session, _tenant(session, name))


def _active(session: Session, name: str) -> Tenant:
    tenant = _tenant(session, name)
    if tenant.state == TenantState.deleting:
        raise TenantBusy(f"tenant {name} is being deleted")
    return tenant


def scale_tenant(session: Session, name: str, agents: int) -> Operation:
    tenant = _active(session, name)
    running = len(
        session.exec(select(Agent).where(Agent.tenant == name).where(col(Agent.state).in_(PLACED_STATES))).all()
    )
    if agents > running:
        _check_capacity(session, name, tenant.memory_mb, agents - running)
    kind = OperationKind.hibernate if agents == 0 else OperationKind.scale
    if agents == 0 and tenant.agents:
        tenant.wake_agents = tenant.agents
    tenant.agents = agents
    tenant.state = TenantState.hibernated if agents == 0 else TenantState.active
    session.add(tenant)
    op = _queue(session, kind, tenant=name, agents=agents)
    session.commit()
    return op


def hibernate_tenant(session: Session, name: str) -> Operation:
    return scale_tenant(session, name, 0)


def wake_tenant(session: Session, name: str) -> Operation:
    tenant = _active(session, name)
    agents = tenant.agents or tenant.wake_agents or 1
    _check_capacity(session, name, tenant.memory_mb, agents)
    tenant.agents, tenant.state = agents, TenantState.active
    session.add(tenant)
    op = _queue(session, OperationKind.wake, tenant=name, agents=agents)
    session.commit()
    return op


def evacuate_tenant(session: Session, name: str, body: EvacuateRequest) -> Operation:
    _active(session, name)
    if body.to_node is not None:
        target = _node(session, body.to_node)
        if target.state != NodeState.ready:
            raise NodeNotReady(f"node {target.name} is {target.state.value}; evacuate to a ready node")
    if body.from_node is not None:
        _node(session, body.from_node)
    op = _queue(session, OperationKind.evacuate, tenant=name, to_node=body.to_node, from_node=body.from_node)
    session.commit()
    return op


def delete_tenant(session: Session, name: str, purge: bool) -> Operation:
    tenant = _tenant(session, name)
    tenant.state = TenantState.deleting
    session.add(tenant)
    op = _queue(session, OperationKind.delete, tenant=name, purge=purge)
    session.commit()
    return op


# -- operations and events ------------------------------------------------------------------------------------------


def operation_public(op: Operation) -> OperationPublic:
    return OperationPublic.model_validate(op, from_attributes=True)


def get_operation(session: Session, op_id: str) -> Operation:
    op = session.get(Operation, op_id)
    if op is None:
        raise OperationNotFound(f"no operation {op_id!r}")
    return op


def wait_operation(session: Session, op_id: str, timeout: float) -> Operation:
    deadline = time.monotonic() + timeout
    while True:
        session.expire_all()
        op = get_operation(session, op_id)
        if op.state in (OperationState.succeeded, OperationState.failed) or time.monotonic() > deadline:
            return op
        time.sleep(0.2)


def list_operations(session: Session, tenant: str | None, state: str | None, limit: int) -> Sequence[Operation]:
    query = select(Operation).order_by(col(Operation.created_at).desc()).limit(limit)
    if tenant:
        query = query.where(Operation.tenant == tenant)
    if state:
        if state not in OperationState.__members__:
            raise InvalidRequest(f"state must be one of {', '.join(OperationState.__members__)}")
        query = query.where(Operation.state == OperationState(state))
    return session.exec(query).all()


def list_events(
    session: Session, tenant: str | None, node: str | None, kind: str | None, since: float | None, limit: int
) -> list[EventPublic]:
    query = select(Event).order_by(col(Event.id).desc()).limit(limit)
    if tenant:
        query = query.where(Event.tenant == tenant)
    if node:
        query = query.where(Event.node == node)
    if kind:
        query = query.where(col(Event.kind).startswith(kind))
    if since is not None:
        query = query.where(Event.at > since)
    return [EventPublic.model_validate(event, from_attributes=True) for event in session.exec(query)]


# -- workflow routing -----------------------------------------------------------------------------------------------


def _running_agents(session: Session, name: str) -> list[Agent]:
    _tenant(session, name)
    agents = session.exec(
        select(Agent).where(Agent.tenant == name).where(Agent.state == AgentState.running).order_by(col(Agent.ordinal))
    ).all()
    if not agents:
        raise NoAgentRunning(f"tenant {name} has no running agent (hibernated, or still starting)")
    return list(agents)


def _home(agents: list[Agent], workflow_id: str) -> list[Agent]:
    """The agents to ask for a workflow id: its hash's agent first, then the others (it may have been started
    before a scale changed the count)."""
    first = int(hashlib.sha256(workflow_id.encode()).hexdigest(), 16) % len(agents)
    return agents[first:] + agents[:first]


def start_workflow(session: Session, tenant: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Start on one agent, chosen by the workflow id's hash. With an id that already exists anywhere, that agent's
    answer is returned (idempotent start by id, as on one agent)."""
    agents = _running_agents(session, tenant)
    workflow_id = body.get("id") or secrets.token_hex(8)
    if not isinstance(workflow_id, str):
        raise InvalidRequest("id must be a string")
    body = {**body, "id": workflow_id}
    ordered = _home(agents, workflow_id)
    for agent in ordered[1:]:
        found = httpx.get(f"{agent.url}/v1/workflows/{workflow_id}", timeout=10)
        if found.status_code == 200:
            return 200, {**found.json(), "agent": agent.ordinal}
    answer = httpx.post(f"{ordered[0].url}/v1/workflows/{name}", json=body, timeout=30)
    return answer.status_code, {**answer.json(), "agent": ordered[0].ordinal}


def find_workflow(session: Session, tenant: str, workflow_id: str, wait: float) -> dict[str, Any]:
    for agent in _home(_running_agents(session, tenant), workflow_id):
        found = httpx.get(
            f"{agent.url}/v1/workflows/{workflow_id}", params={"wait": wait} if wait else None, timeout=wait + 10
        )
        if found.status_code == 200:
            return {**found.json(), "agent": agent.ordinal}
    raise WorkflowNotFound(f"no agent of {tenant} holds workflow {workflow_id!r}")
