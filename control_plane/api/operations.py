"""`/v1/operations` (poll, wait for, list) and `/v1/events` (what happened, newest first)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from control_plane.api.deps import SessionDep, TimeoutQuery, WaitQuery, require_admin
from control_plane.api.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery, page_answer, rows_answer
from control_plane.api.waiting import operation_after_wait, read_operation
from control_plane.db.models import EventPublic, OperationPublic, Page
from control_plane.services import operations

router = APIRouter(prefix="/v1/operations", tags=["operations"], dependencies=[Depends(require_admin)])


@router.get("", response_model=Page[OperationPublic])
def list_operations(
    session: SessionDep,
    tenant: str | None = None,
    state: str | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Response:
    return rows_answer(*operations.operation_rows(session, tenant, state, limit, cursor))


@router.get("/{op_id}")
async def get_operation(request: Request, op_id: str, wait: WaitQuery = False, timeout: TimeoutQuery = 600) -> Any:
    """With `wait`, answered once the operation finished or `timeout` ran out, waiting on the event loop: no DB
    connection and no worker thread is held meanwhile."""
    if wait:
        _, body = await operation_after_wait(request, op_id, timeout)
    else:
        _, body = await asyncio.to_thread(read_operation, request.app.state.engine, op_id)
    return JSONResponse(body)


events_router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(require_admin)])


@events_router.get("", response_model=Page[EventPublic])
def list_events(
    session: SessionDep,
    tenant: str | None = None,
    node: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    cursor: CursorQuery = None,
) -> Response:
    return page_answer(EventPublic, operations.list_events(session, tenant, node, kind, since, limit, cursor))
