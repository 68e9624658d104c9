"""Is the fleet DB consistent? Each rule is something the control plane promises at every moment, whatever
requests it was sent; `problems(engine)` lists every broken one (an empty list: consistent)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import (
    FINISHED_STATES,
    PLACED_STATES,
    Agent,
    ApiToken,
    Event,
    Node,
    Operation,
    OperationState,
    Tenant,
    TenantState,
)

MAX_AGENTS = 64


def problems(engine: Engine) -> list[str]:
    found: list[str] = []
    if engine.url.get_backend_name() == "sqlite":
        with engine.connect() as connection:
            verdict = connection.execute(text("PRAGMA integrity_check")).scalar()
            if verdict != "ok":
                found.append(f"sqlite integrity_check: {verdict}")
    with Session(engine) as session:
        tenants = {tenant.name: tenant for tenant in session.exec(select(Tenant))}
        nodes = {node.name: node for node in session.exec(select(Node))}
        agents = session.exec(select(Agent)).all()
        operations = session.exec(select(Operation)).all()
        events = session.exec(select(Event)).all()
        tokens = session.exec(select(ApiToken)).all()
    found += _tenants(tenants)
    found += _agents(agents, tenants, nodes)
    unfinished = {op.id for op in operations if op.state not in FINISHED_STATES}
    found += [
        f"agent {agent.id} keeps a place on {agent.reserved_node} for operation {agent.reserved_by}, which ended"
        for agent in agents
        if agent.reserved_by is not None and agent.reserved_by not in unfinished
    ]
    found += _operations(operations, events)
    found += [
        f"token {token.id} of tenant {token.tenant}, which does not exist"
        for token in tokens
        if token.tenant not in tenants
    ]
    return found


def _tenants(tenants: dict[str, Tenant]) -> list[str]:
    found = []
    for tenant in tenants.values():
        if not 0 <= tenant.agents <= MAX_AGENTS:
            found.append(f"tenant {tenant.name} wants {tenant.agents} agents")
        if tenant.state == TenantState.hibernated and tenant.agents != 0:
            found.append(f"tenant {tenant.name} is hibernated with {tenant.agents} agents wanted")
    return found


def _agents(agents: list[Agent], tenants: dict[str, Tenant], nodes: dict[str, Node]) -> list[str]:
    found = []
    placed: Counter[str] = Counter()
    for agent in agents:
        if agent.tenant not in tenants:
            found.append(f"agent {agent.id} of tenant {agent.tenant}, which does not exist")
        if agent.id != f"{agent.tenant}/{agent.ordinal}" or not 0 <= agent.ordinal < MAX_AGENTS:
            found.append(f"agent {agent.id} is tenant {agent.tenant} ordinal {agent.ordinal}")
        if agent.state in PLACED_STATES:
            if agent.node is None or agent.node not in nodes:
                found.append(f"agent {agent.id} is {agent.state.value} on node {agent.node}, which does not exist")
            else:
                placed[agent.node] += 1
    for name, count in placed.items():
        if count > nodes[name].capacity_agents:
            found.append(f"node {name} holds {count} agents, more than its capacity {nodes[name].capacity_agents}")
    return found


def _operations(operations: list[Operation], events: list[Event]) -> list[str]:
    found = []
    running = Counter(op.tenant for op in operations if op.tenant and op.state == OperationState.running)
    found += [f"tenant {tenant} has {count} running operations" for tenant, count in running.items() if count > 1]
    named = Counter(event.operation for event in events if event.operation)
    for op in operations:
        if (op.finished_at is not None) != (op.state in FINISHED_STATES):
            found.append(f"operation {op.id} is {op.state.value} with finished_at {op.finished_at}")
        if op.state in FINISHED_STATES and op.lock_token is not None:
            found.append(f"operation {op.id} is {op.state.value} but still locked")
        if op.state == OperationState.failed and not op.error:
            found.append(f"operation {op.id} failed without an error")
        if not named[op.id]:
            found.append(f"operation {op.id} ({op.kind.value}) has no event: nobody was told it was queued")
    known = {op.id for op in operations}
    found += [
        f"{count} events name operation {op_id}, which does not exist"
        for op_id, count in named.items()
        if op_id not in known
    ]
    return found
