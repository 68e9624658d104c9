"""Read-only views of the fleet DB for people (the dashboard): the fleet at a glance with what needs attention, a
tenant's history (generations and where each ran, operations with their downtime), and the step log and events
after a point, for live streams. Nothing here writes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from control_plane.db.models import (
    FINISHED_STATES,
    Agent,
    AgentPublic,
    AgentState,
    Event,
    EventPublic,
    NodePublic,
    NodeState,
    Operation,
    OperationKind,
    OperationState,
    ReplicationState,
    Tenant,
    TenantPublic,
    worst_replication,
)
from control_plane.services.nodes import all_nodes
from control_plane.services.operations import get_operation, recent_operations
from control_plane.services.tenants import find_tenant, tenant_public

TRANSIENT_STATES = (AgentState.starting, AgentState.stopping)
BEHIND = (ReplicationState.stalled, ReplicationState.lagging)  # measured against the store (observer/lag.py)
MOVES = (OperationKind.evacuate, OperationKind.drain, OperationKind.failover)


@dataclass(frozen=True)
class Thresholds:
    stuck_after_s: float = 120.0  # an agent starting or stopping longer than this is stuck
    failed_within_s: float = 24 * 3600.0  # failed operations this recent are shown as alerts


@dataclass(frozen=True)
class Alert:
    kind: str  # node_down, replication_stalled, replication_lagging, agent_stuck, operation_failed, lag_growing
    subject: str  # what it is about: a node, tenant/ordinal, or an operation id
    message: str
    link: str | None = None  # a dashboard path


@dataclass(frozen=True)
class TenantSummary:
    name: str
    state: str
    desired: int
    by_state: dict[str, int]
    replication: str = ReplicationState.ok.value  # the worst of its running agents'


@dataclass(frozen=True)
class Overview:
    at: float
    nodes: list[NodePublic]
    tenants: list[TenantSummary]
    agents: list[AgentPublic]
    operations: list[Operation]
    alerts: list[Alert]


def list_agents(session: Session) -> list[AgentPublic]:
    """Every agent with its last health probe, by tenant and ordinal."""
    query = select(Agent).order_by(col(Agent.tenant), col(Agent.ordinal))
    return [AgentPublic.model_validate(agent, from_attributes=True) for agent in session.exec(query)]


def fleet_overview(session: Session, thresholds: Thresholds = Thresholds(), now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    nodes = all_nodes(session)
    agents = list_agents(session)
    counts: dict[str, dict[str, int]] = {}
    running: dict[str, list[ReplicationState]] = {}
    for agent in agents:
        by_state = counts.setdefault(agent.tenant, {})
        by_state[agent.state.value] = by_state.get(agent.state.value, 0) + 1
        if agent.state == AgentState.running:
            running.setdefault(agent.tenant, []).append(agent.replication)
    tenants = [
        TenantSummary(
            tenant.name,
            tenant.state.value,
            tenant.agents,
            counts.get(tenant.name, {}),
            worst_replication(running.get(tenant.name, [])).value,
        )
        for tenant in session.exec(select(Tenant).order_by(col(Tenant.name)))
    ]
    operations = list(recent_operations(session, None, None, 50))
    return Overview(now, nodes, tenants, agents, operations, _alerts(nodes, agents, operations, thresholds, now))


def _alerts(
    nodes: list[NodePublic],
    agents: list[AgentPublic],
    operations: Sequence[Operation],
    thresholds: Thresholds,
    now: float,
) -> list[Alert]:
    alerts = []
    for node in nodes:
        if node.state == NodeState.down:
            seen = "never" if node.last_seen_at is None else f"{now - node.last_seen_at:.0f}s ago"
            alerts.append(Alert("node_down", node.name, f"node {node.name} is down (last heartbeat {seen})"))
    for agent in agents:
        subject = f"{agent.tenant}/{agent.ordinal}"
        link = f"/ui/tenants/{agent.tenant}"
        if agent.state in TRANSIENT_STATES and now - agent.updated_at > thresholds.stuck_after_s:
            alerts.append(
                Alert(
                    "agent_stuck",
                    subject,
                    f"{subject} has been {agent.state.value} for {now - agent.updated_at:.0f}s",
                    link,
                )
            )
        if agent.state == AgentState.running and agent.replication in BEHIND:
            alerts.append(Alert(f"replication_{agent.replication.value}", subject, _behind(subject, agent), link))
    for op in operations:
        if op.state == OperationState.failed and now - (op.finished_at or op.updated_at) < thresholds.failed_within_s:
            what = f"{op.kind.value} of {op.tenant or op.node}"
            alerts.append(Alert("operation_failed", op.id, f"{what} failed: {op.error}", f"/ui/operations/{op.id}"))
    return alerts


def _behind(subject: str, agent: AgentPublic) -> str:
    since = (
        "no sync ever confirmed" if agent.lag_seconds is None else f"last confirmed sync {agent.lag_seconds:.0f}s ago"
    )
    where = f"replica at txid {agent.replica_txid}, agent reported {agent.local_txid}"
    return f"{subject} replication {agent.replication.value}: {since} ({where}); {agent.replication_note or ''}".rstrip(
        "; "
    )


# -- a tenant's history ---------------------------------------------------------------------------------------------


@dataclass
class Generation:
    ordinal: int
    generation: int
    node: str | None
    started_at: float | None = None
    stopped_at: float | None = None
    operation: str | None = None  # the operation that started it


@dataclass(frozen=True)
class OperationSummary:
    id: str
    kind: str
    state: str
    created_at: float
    finished_at: float | None
    duration_s: float | None
    downtime_s: dict[str, float]  # agent id -> seconds, from the operation's result
    error: str | None


@dataclass
class TenantHistory:
    tenant: TenantPublic
    generations: dict[int, list[Generation]] = field(default_factory=dict)  # ordinal -> oldest first
    operations: list[OperationSummary] = field(default_factory=list)  # oldest first


def operation_summary(op: Operation) -> OperationSummary:
    downtime = op.result.get("downtime_s") or {}
    return OperationSummary(
        id=op.id,
        kind=op.kind.value,
        state=op.state.value,
        created_at=op.created_at,
        finished_at=op.finished_at,
        duration_s=None if op.finished_at is None else round(op.finished_at - op.created_at, 3),
        downtime_s={str(k): float(v) for k, v in downtime.items()} if isinstance(downtime, dict) else {},
        error=op.error,
    )


def tenant_history(session: Session, name: str, limit: int = 200) -> TenantHistory:
    """Every generation of every agent the tenant's operations started (where, when, until when), and the
    operations themselves, from the operations' step logs."""
    history = TenantHistory(tenant_public(session, find_tenant(session, name)))
    ops = list(reversed(recent_operations(session, name, None, limit)))
    seen: dict[tuple[int, int], Generation] = {}
    for op in ops:
        history.operations.append(operation_summary(op))
        for step in op.steps:
            _apply_step(seen, op.id, step)
    for agent in history.tenant.placements:  # rows made outside any recorded operation still show
        if agent.generation and (agent.ordinal, agent.generation) not in seen:
            seen[(agent.ordinal, agent.generation)] = Generation(agent.ordinal, agent.generation, agent.node)
    for key in sorted(seen):
        history.generations.setdefault(key[0], []).append(seen[key])
    return history


def _apply_step(seen: dict[tuple[int, int], Generation], op_id: str, step: dict[str, Any]) -> None:
    ordinal, generation = step.get("agent"), step.get("generation")
    if not isinstance(ordinal, int) or not isinstance(generation, int):
        return
    known = seen.get((ordinal, generation))
    if step.get("step") == "agent.started":
        if known is None:
            seen[(ordinal, generation)] = Generation(ordinal, generation, step.get("node"), step.get("at"), None, op_id)
        else:
            known.node, known.started_at = step.get("node") or known.node, known.started_at or step.get("at")
    elif step.get("step") == "agent.stopped":
        if known is None:
            known = seen[(ordinal, generation)] = Generation(ordinal, generation, step.get("node"))
        known.stopped_at = step.get("at")


def move_downtimes(session: Session, limit: int = 20) -> list[tuple[str, dict[str, float]]]:
    """(operation id, agent id -> downtime s) of the most recent evacuations, drains and fail-overs, oldest first."""
    query = (
        select(Operation)
        .where(col(Operation.kind).in_(MOVES))
        .where(Operation.state == OperationState.succeeded)
        .order_by(col(Operation.created_at).desc())
        .limit(limit)
    )
    found = [(op.id, operation_summary(op).downtime_s) for op in session.exec(query)]
    return [item for item in reversed(found) if item[1]]


# -- what is new since a point, for live streams -----------------------------------------------------------------


@dataclass(frozen=True)
class StepsSince:
    steps: list[dict[str, Any]]  # the steps after the given count
    total: int  # how many steps the operation has now
    state: OperationState
    finished: bool


def steps_since(session: Session, op_id: str, count: int) -> StepsSince:
    op = get_operation(session, op_id)
    done = op.state in FINISHED_STATES
    return StepsSince(list(op.steps[count:]), len(op.steps), op.state, done)


def events_after(session: Session, after_id: int, limit: int = 200) -> list[EventPublic]:
    """Events with an id above `after_id`, oldest first."""
    query = select(Event).where(col(Event.id) > after_id).order_by(col(Event.id)).limit(limit)
    return [EventPublic.model_validate(event, from_attributes=True) for event in session.exec(query)]


def latest_event_id(session: Session) -> int:
    newest = session.exec(select(Event).order_by(col(Event.id).desc()).limit(1)).first()
    return 0 if newest is None or newest.id is None else newest.id
