"""Operations and events as the API sees them: queue one, read, wait for, list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from control_plane.db.models import (
    FINISHED_STATES,
    Event,
    EventPublic,
    Operation,
    OperationKind,
    OperationPublic,
    OperationState,
    Page,
)
from control_plane.errors import InvalidRequest, OperationNotFound
from control_plane.services.paging import DEFAULT_LIMIT, decode, encode
from control_plane.timing import poll


def event(session: Session, kind: str, message: str, **ids: Any) -> None:
    session.add(Event(kind=kind, message=message, **ids))


def queue(
    session: Session, kind: OperationKind, *, tenant: str | None = None, node: str | None = None, **params: Any
) -> Operation:
    op = Operation(kind=kind, tenant=tenant, node=node, params=params)
    session.add(op)
    event(session, f"operation.{kind.value}", f"{kind.value} queued", tenant=tenant, node=node, operation=op.id)
    return op


def operation_public(op: Operation) -> OperationPublic:
    return OperationPublic.model_validate(op, from_attributes=True)


def get_operation(session: Session, op_id: str) -> Operation:
    op = session.get(Operation, op_id)
    if op is None:
        raise OperationNotFound(f"no operation {op_id!r}")
    return op


def wait_operation(session: Session, op_id: str, timeout: float) -> Operation:
    """The operation once it finished, or as it is when `timeout` runs out."""
    for _ in poll(timeout, 0.2):
        session.expire_all()
        op = get_operation(session, op_id)
        if op.state in FINISHED_STATES:
            return op
    session.expire_all()
    return get_operation(session, op_id)


def recent_operations(
    session: Session, tenant: str | None, state: str | None, limit: int, after: tuple[float, str] | None = None
) -> Sequence[Operation]:
    """Operations newest first (created_at, then id: a total order), after the row with key `after`."""
    query = select(Operation).order_by(col(Operation.created_at).desc(), col(Operation.id).desc()).limit(limit)
    if after is not None:
        created_at, op_id = after
        query = query.where(
            or_(
                col(Operation.created_at) < created_at,
                and_(col(Operation.created_at) == created_at, col(Operation.id) < op_id),
            )
        )
    if tenant:
        query = query.where(Operation.tenant == tenant)
    if state:
        if state not in OperationState.__members__:
            raise InvalidRequest(f"state must be one of {', '.join(OperationState.__members__)}")
        query = query.where(Operation.state == OperationState(state))
    return session.exec(query).all()


def list_operations(
    session: Session, tenant: str | None, state: str | None, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[OperationPublic]:
    """One page of operations, newest first; one query."""
    after = decode(cursor, "operations", float, str)
    rows = recent_operations(session, tenant, state, limit + 1, (float(after[0]), after[1]) if after else None)
    page = rows[:limit]
    return Page(
        items=[operation_public(op) for op in page],
        next_cursor=encode("operations", page[-1].created_at, page[-1].id) if len(rows) > limit else None,
    )


def list_events(
    session: Session,
    tenant: str | None,
    node: str | None,
    kind: str | None,
    since: float | None,
    limit: int,
    cursor: str | None = None,
) -> Page[EventPublic]:
    """One page of events, newest first (by id); one query."""
    after = decode(cursor, "events", int)
    query = select(Event).order_by(col(Event.id).desc()).limit(limit + 1)
    if after is not None:
        query = query.where(col(Event.id) < after[0])
    if tenant:
        query = query.where(Event.tenant == tenant)
    if node:
        query = query.where(Event.node == node)
    if kind:
        query = query.where(col(Event.kind).startswith(kind))
    if since is not None:
        query = query.where(Event.at > since)
    rows = session.exec(query).all()
    page = rows[:limit]
    return Page(
        items=[EventPublic.model_validate(event, from_attributes=True) for event in page],
        next_cursor=encode("events", int(page[-1].id or 0)) if len(rows) > limit else None,
    )
