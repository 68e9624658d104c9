"""What every route depends on: a session, the caller (a bearer token when the API has one), the engine probe,
and the one way a long action answers (`202` with the operation, or `200` once it finished with `?wait=true`)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

from control_plane.api.waiting import OperationWait, wait_slot
from control_plane.db.models import Operation
from control_plane.errors import Unauthorized
from control_plane.observer import Observer
from control_plane.services import operations
from control_plane.services.nodes import EngineProbe


def _session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


def require_admin(request: Request) -> str:
    """The caller; every /v1 route depends on it (the API always has a token: settings.api_token)."""
    token: str = request.app.state.token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("send Authorization: Bearer <LITEFLEET_API_TOKEN>")
    return "admin"


def _probe(request: Request) -> EngineProbe:
    probe: EngineProbe = request.app.state.probe_engine
    return probe


def _observer(request: Request) -> Observer | None:
    observer: Observer | None = request.app.state.observer
    return observer


SessionDep = Annotated[Session, Depends(_session)]
ObserverDep = Annotated[Observer | None, Depends(_observer)]
ProbeDep = Annotated[EngineProbe, Depends(_probe)]
WaitQuery = Annotated[bool, Depends(wait_slot)]  # a slot of the capped waits (429 past it), taken before the route
TimeoutQuery = Annotated[float, Query(ge=0, le=3600, description="seconds to wait with wait=true")]


def accepted(session: Session, op: Operation, wait: bool, timeout: float) -> JSONResponse:
    """202 with the queued operation; with `wait`, a response that waits for it on the event loop (200 once it
    finished), the session closed first so that no connection is held while it waits."""
    if wait:
        op_id = op.id
        session.close()
        return OperationWait(op_id, timeout)
    return JSONResponse(operations.operation_public(op).model_dump(mode="json"), status_code=202)
