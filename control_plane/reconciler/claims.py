"""Claims on operation rows: take one with a fresh lock token (a lease), renew it, finish only while it is ours.

A claim is a lease (`locked_until`), renewed while the worker lives. When a control plane dies (kill -9), its
leases run out and any replica claims the operations again and re-runs them from the top."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal, cast

from sqlalchemy import or_, update
from sqlalchemy import select as columns  # sqlmodel's select takes at most four columns
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlmodel import Session, col, select

from control_plane.db.models import UNFINISHED_STATES, Agent, Operation, OperationKind, OperationState
from control_plane.fleet.placement import release_reservations

NODE_WIDE = (OperationKind.drain, OperationKind.failover)  # they move the agents of one node, of many tenants
Only = Literal["tenant", "node"]  # claim only tenant operations, or only node-wide ones


class LostLease(Exception):
    """Another worker owns the operation now; stop without writing anything."""


class Stopping(LostLease):
    """This control plane is stopping: leave the operation at this step, release its lease (`release`) and let
    any replica resume it from the recorded plans at once."""


def claim(
    engine: Engine, lease: float, *, only: Only | None = None, node_wide_limit: int = 1
) -> tuple[Operation, str] | None:
    """Take the oldest due operation (`claim_batch` of one); None when nothing is due."""
    taken = claim_batch(engine, lease, only=only, node_wide_limit=node_wide_limit, limit=1)
    return taken[0] if taken else None


def claim_batch(
    engine: Engine, lease: float, *, only: Only | None = None, node_wide_limit: int = 1, limit: int = 1
) -> list[tuple[Operation, str]]:
    """Take up to `limit` due operations, oldest first, that nothing ahead of them conflicts with (an operation
    taken in this batch counts as ahead of the later ones, as it would for a later claim), each stamped with a
    fresh lock token, in one read of the queue and one transaction: a pass over a long queue costs one read, not
    one per operation. Operations conflict, the older one going first, when they touch the same things:
    - a tenant's operations: one at a time, in order;
    - a node-wide one (drain, fail-over) touches the agents placed on its node, and those its recorded plan moves
      (`_scopes`): it waits for the operations of those agents' tenants asked before it, and they wait for it;
    - two node-wide ones conflict only when they share an agent (fail-overs of two nodes move disjoint agents,
      so they run side by side, at most `node_wide_limit` held at once across every control plane).
    A node-wide operation without a node is fleet-wide and runs alone, as every node-wide one used to.
    Safe against other claimers: each row is taken by a conditional UPDATE (unlocked or lease run out), and a row
    another worker took between the read and the update is skipped."""
    now = time.time()
    taken: list[str] = []
    tokens: dict[str, str] = {}
    with Session(engine) as session:
        unfinished = session.execute(
            columns(
                col(Operation.id),
                col(Operation.kind),
                col(Operation.tenant),
                col(Operation.node),
                col(Operation.locked_until),
            )
            .where(col(Operation.state).in_(UNFINISHED_STATES))
            .order_by(col(Operation.created_at), col(Operation.id))
        ).all()
        scopes = _scopes(
            session,
            [(op_id, node) for op_id, kind, _, node, _ in unfinished if kind in NODE_WIDE],
            {tenant for _, kind, tenant, _, _ in unfinished if kind not in NODE_WIDE and tenant is not None},
        )
        node_wide_held = sum(1 for _, kind, _, _, until in unfinished if kind in NODE_WIDE and _held(until, now))
        tenant_ops_ahead: set[str | None] = set()  # tenants with an unfinished tenant operation ahead
        node_wide_tenants: set[str] = set()  # tenants whose agents a node-wide operation ahead touches
        node_wide_agents: set[str] = set()
        anything_ahead = fleet_wide_ahead = False
        for op_id, kind, tenant, _, until in unfinished:
            scope = scopes.get(op_id)
            if kind in NODE_WIDE:
                tenants = {agent.partition("/")[0] for agent in scope or ()}
                free = (
                    (not anything_ahead)
                    if scope is None
                    else not (fleet_wide_ahead or tenants & tenant_ops_ahead or scope & node_wide_agents)
                )
                wanted = only != "tenant" and node_wide_held < node_wide_limit
            else:
                free = not fleet_wide_ahead and tenant not in tenant_ops_ahead and tenant not in node_wide_tenants
                wanted = only != "node"
            if free and wanted and len(taken) < limit and not _held(until, now):
                token = _take(session, op_id, now, lease)
                if token is not None:
                    taken.append(op_id)
                    tokens[op_id] = token
                    node_wide_held += kind in NODE_WIDE
            anything_ahead = True
            if kind not in NODE_WIDE:
                tenant_ops_ahead.add(tenant)
            elif scope is None:
                fleet_wide_ahead = True
            else:
                node_wide_agents |= scope
                node_wide_tenants |= tenants
        session.commit()
        if not taken:
            return []
        rows = {op.id: op for op in session.exec(select(Operation).where(col(Operation.id).in_(taken)))}
    return [(rows[op_id], tokens[op_id]) for op_id in taken if op_id in rows]


def _held(locked_until: float | None, now: float) -> bool:
    return locked_until is not None and locked_until > now


def _take(session: Session, op_id: str, now: float, lease: float) -> str | None:
    """Stamp a fresh lock token on the operation if it is still unlocked (or its lease ran out); the token, or
    None when another worker took it since it was read. Committed with the rest of the batch."""
    token = secrets.token_hex(8)
    claimed = session.execute(
        update(Operation)
        .where(col(Operation.id) == op_id)
        .where(or_(col(Operation.locked_until).is_(None), col(Operation.locked_until) < now))
        .values(
            lock_token=token,
            locked_until=now + lease,
            state=OperationState.running,
            attempts=Operation.attempts + 1,
            updated_at=now,
        )
    )
    return token if _rows(claimed) == 1 else None


def _scopes(
    session: Session, node_wide: list[tuple[str, str | None]], queued_tenants: set[str]
) -> dict[str, set[str] | None]:
    """Operation id -> the agent ids ("tenant/ordinal") a node-wide operation touches, as far as any other
    unfinished operation can conflict with them: its node's agents (and those another operation planned onto it:
    a drain waits for the provision that reserved a place there) of `queued_tenants` (the tenants with a tenant
    operation queued: no other tenant can conflict) and of any node-wide operation's recorded plan (two node-wide
    operations can share an agent only through a plan: an agent a fail-over already placed elsewhere is still its
    own until it is done), plus its own plan. None for one without a node: the whole fleet. Two small queries
    whatever the size of the fleet (not every agent of every failing node at every claim)."""
    ids = [op_id for op_id, node in node_wide if node is not None]
    planned: dict[str, set[str]] = {}
    if ids:
        started = select(Operation.id, Operation.params).where(col(Operation.id).in_(ids)).where(Operation.attempts > 0)
        for op_id, params in session.exec(started):
            plan = params.get("plan") if isinstance(params, dict) else None
            planned[op_id] = set(plan) if isinstance(plan, dict) else set()
    in_plans = set().union(*planned.values()) if planned else set()
    nodes = {node for _, node in node_wide if node is not None}
    on_node: dict[str, set[str]] = {}
    if nodes and (queued_tenants or in_plans):
        query = (
            select(Agent.id, Agent.node, Agent.reserved_node)
            .where(or_(col(Agent.node).in_(nodes), col(Agent.reserved_node).in_(nodes)))
            .where(or_(col(Agent.tenant).in_(queued_tenants), col(Agent.id).in_(in_plans)))
        )
        for agent_id, *places in session.exec(query):  # on the node, or planned onto it by another operation
            for node in {place for place in places if place in nodes}:
                on_node.setdefault(node, set()).add(agent_id)
    return {
        op_id: None if node is None else on_node.get(node, set()) | planned.get(op_id, set())
        for op_id, node in node_wide
    }


def finish(engine: Engine, op_id: str, token: str, error: str | None, result: dict[str, Any]) -> bool:
    """Mark the operation done if the token is still ours, and forget the places its plans reserved (in the same
    commit). Safe to call twice: the second finds no token."""
    now = time.time()
    with Session(engine) as session:
        done = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(
                state=OperationState.failed if error else OperationState.succeeded,
                error=error,
                result=result,
                lock_token=None,
                locked_until=None,
                finished_at=now,
                updated_at=now,
            )
        )
        finished = _rows(done) == 1
        if finished:
            release_reservations(session, op_id)
        session.commit()
        return finished


def release(engine: Engine, op_id: str, token: str) -> bool:
    """Give the operation back unfinished (still `running`, no lock): the next `claim` anywhere takes it at once
    and re-runs it from the top. Safe to call twice: the second call finds the token gone."""
    with Session(engine) as session:
        released = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(lock_token=None, locked_until=None, updated_at=time.time())
        )
        session.commit()
        return _rows(released) == 1


def renew(engine: Engine, op_id: str, token: str, lease: float) -> bool:
    with Session(engine) as session:
        renewed = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(locked_until=time.time() + lease)
        )
        session.commit()
        return _rows(renewed) == 1


def _rows(result: Result[Any]) -> int:
    """Rows an UPDATE matched (SQLAlchemy types execute() as Result; for an UPDATE it is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount
