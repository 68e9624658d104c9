"""`/v1/operations` (poll, wait for, list) and `/v1/events` (what happened, newest first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from control_plane.api.deps import SessionDep, TimeoutQuery, WaitQuery, require_admin
from control_plane.api.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery
from control_plane.db.models import EventPublic, OperationPublic, Page
from control_plane.services import operations

router = APIRouter(prefix="/v1/operations", tags=["operations"], dependencies=[Depends(require_admin)])


@router.get("")
def list_operations(
    session: SessionDep,
    tenant: str | None = None,
    state: str | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[OperationPublic]:
    return operations.list_operations(session, tenant, state, limit, cursor)


@router.get("/{op_id}")
def get_operation(
    op_id: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> OperationPublic:
    op = operations.wait_operation(session, op_id, timeout) if wait else operations.get_operation(session, op_id)
    return operations.operation_public(op)


events_router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(require_admin)])


@events_router.get("")
def list_events(
    session: SessionDep,
    tenant: str | None = None,
    node: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    cursor: CursorQuery = None,
) -> Page[EventPublic]:
    return operations.list_events(session, tenant, node, kind, since, limit, cursor)
