"""Operations and events as the API sees them: queue one, read, wait for, list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from control_plane.db.models import Event, EventPublic, Operation, OperationKind, OperationPublic, OperationState
from control_plane.errors import InvalidRequest, OperationNotFound
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
        if op.state in (OperationState.succeeded, OperationState.failed):
            return op
    session.expire_all()
    return get_operation(session, op_id)


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
