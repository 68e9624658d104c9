"""The async side of `?wait=`: a slot taken before the route runs (429 past the cap, before anything is queued),
and a response that waits for its operation on the event loop, holding neither a DB connection nor a thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.types import Receive, Scope, Send

from control_plane.db.models import FINISHED_STATES
from control_plane.services import operations
from control_plane.services.waits import Waits

log = structlog.get_logger("control_plane.api")


def waits_of(request: Request) -> Waits:
    waits: Waits = request.app.state.waits
    return waits


async def wait_slot(
    request: Request, wait: Annotated[bool, Query(description="wait for the operation to finish")] = False
) -> AsyncIterator[bool]:
    """`?wait=true` holds one of the control plane's wait slots until its response is sent."""
    if not wait:
        yield False
        return
    with waits_of(request).slot():
        yield True


async def wait_seconds_slot(
    request: Request, wait: Annotated[float, Query(ge=0, le=300, description="seconds to long-poll")] = 0
) -> AsyncIterator[float]:
    """`?wait=N` (N > 0) holds one of the control plane's wait slots until its response is sent."""
    if not wait:
        yield 0
        return
    with waits_of(request).slot():
        yield wait


def read_operation(engine: Engine, op_id: str) -> tuple[int, dict[str, object]]:
    """The operation as JSON in one short session, with 200 once it finished and 202 while it runs."""
    with Session(engine) as session:
        op = operations.get_operation(session, op_id)
        finished = op.state in FINISHED_STATES
        return (200 if finished else 202), operations.operation_public(op).model_dump(mode="json")


async def operation_after_wait(request: Request, op_id: str, timeout: float) -> tuple[int, dict[str, object]]:
    await waits_of(request).operation(op_id, timeout)
    return await asyncio.to_thread(read_operation, request.app.state.engine, op_id)


def announce_queued(scope: Scope) -> None:
    """The operation the response answers for is committed: this control plane's reconciler looks at the queue
    now (a no-op before it runs, or without one). Never fails the response: the operation is queued either way,
    and the reconciler's next look finds it."""
    try:
        scope["app"].state.operation_queued()
    except Exception:
        log.warning("reconciler.wake_failed", exc_info=True)


class Queued(JSONResponse):
    """202 with an operation just queued; sending it wakes the reconciler (`announce_queued`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        announce_queued(scope)
        await super().__call__(scope, receive, send)


class OperationWait(JSONResponse):
    """What a `?wait=true` action returns once its operation is queued: sent when the operation finished (200)
    or `timeout` ran out (202 with it as it is), waiting on the event loop in between. It wakes the reconciler
    first (`announce_queued`)."""

    def __init__(self, op_id: str, timeout: float) -> None:
        super().__init__(None, status_code=202)
        self.op_id, self.timeout = op_id, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        announce_queued(scope)
        await app.state.waits.operation(self.op_id, self.timeout)
        status, body = await asyncio.to_thread(read_operation, app.state.engine, self.op_id)
        await JSONResponse(body, status_code=status)(scope, receive, send)
