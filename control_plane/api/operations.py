"""`/v1/operations` (poll, wait for, list) and `/v1/events` (what happened, newest first)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from control_plane.api.deps import SessionDep, TimeoutQuery, WaitQuery, require_admin
from control_plane.db.models import EventPublic, OperationPublic
from control_plane.services import operations

router = APIRouter(prefix="/v1/operations", tags=["operations"], dependencies=[Depends(require_admin)])


@router.get("")
def list_operations(
    session: SessionDep,
    tenant: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[OperationPublic]:
    return [operations.operation_public(op) for op in operations.list_operations(session, tenant, state, limit)]


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
) -> list[EventPublic]:
    return operations.list_events(session, tenant, node, kind, since, limit)
