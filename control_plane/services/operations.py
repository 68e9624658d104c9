"""Operations and events as the API sees them: queue one, read, wait for, list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_
from sqlalchemy import select as columns  # sqlmodel's select builds ORM objects; this reads rows
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from control_plane.db.models import (
    FINISHED_STATES,
    Event,
    EventPublic,
    Operation,
    OperationKind,
    OperationPublic,
    OperationState,
    Page,
    plain,
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


def _newest_first(query: Any, tenant: str | None, state: str | None, after: tuple[float, str] | None) -> Any:
    """`query` over the operation table, newest first (created_at, then id: a total order), after the row with key
    `after`, of `tenant` and in `state` if given."""
    query = query.order_by(col(Operation.created_at).desc(), col(Operation.id).desc())
    if after is not None:
        created_at, op_id = after
        query = query.where(
            # the bound alone is an index range (ix_operation_created_at_id, ix_operation_tenant_created_at): without
            # it the OR below is a filter, and a page deep in the list read every newer operation to skip it
            col(Operation.created_at) <= created_at,
            or_(
                col(Operation.created_at) < created_at,
                and_(col(Operation.created_at) == created_at, col(Operation.id) < op_id),
            ),
        )
    if tenant:
        query = query.where(Operation.tenant == tenant)
    if state:
        if state not in OperationState.__members__:
            raise InvalidRequest(f"state must be one of {', '.join(OperationState.__members__)}")
        query = query.where(Operation.state == OperationState(state))
    return query


def recent_operations(
    session: Session, tenant: str | None, state: str | None, limit: int, after: tuple[float, str] | None = None
) -> Sequence[Operation]:
    """Operations newest first (created_at, then id: a total order), after the row with key `after`."""
    query: SelectOfScalar[Operation] = _newest_first(select(Operation), tenant, state, after)
    return session.exec(query.limit(limit)).all()


_OPERATION_PUBLIC_COLUMNS = tuple(OperationPublic.model_fields)  # its field order: each is a column of the table


def operation_rows(
    session: Session, tenant: str | None, state: str | None, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of operations, newest first, as the API shows it (`OperationPublic`'s JSON, as dicts in its field
    order), and the next page's cursor: one query, read as plain rows, no model built per row."""
    after = decode(cursor, "operations", float, str)
    table = Operation.__table__  # type: ignore[attr-defined]
    query = columns(*(table.c[name] for name in _OPERATION_PUBLIC_COLUMNS))
    query = _newest_first(query, tenant, state, (float(after[0]), after[1]) if after else None).limit(limit + 1)
    rows = session.connection().execute(query).all()
    items = [dict(zip(_OPERATION_PUBLIC_COLUMNS, row, strict=True)) for row in rows[:limit]]
    for item in items:
        item["kind"], item["state"] = plain(item["kind"]), plain(item["state"])
    last = items[-1] if items else None
    return items, (encode("operations", last["created_at"], last["id"]) if last and len(rows) > limit else None)


def list_operations(
    session: Session, tenant: str | None, state: str | None, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[OperationPublic]:
    """One page of operations, newest first; one query (`operation_rows`, as models; the API answers with the rows
    themselves)."""
    items, next_cursor = operation_rows(session, tenant, state, limit, cursor)
    return Page(items=[OperationPublic.model_validate(item) for item in items], next_cursor=next_cursor)


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
