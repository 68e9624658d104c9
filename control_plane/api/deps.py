"""What every route depends on: a session, the caller (a bearer token when the API has one), the engine probe,
and the one way a long action answers (`202` with the operation, or `200` once it finished with `?wait=true`)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session

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
WaitQuery = Annotated[bool, Query(description="wait for the operation to finish")]
TimeoutQuery = Annotated[float, Query(ge=0, le=3600, description="seconds to wait with wait=true")]


def accepted(session: Session, op: Operation, wait: bool, timeout: float) -> JSONResponse:
    if wait:
        op = operations.wait_operation(session, op.id, timeout)
        status = 200 if op.state.value in ("succeeded", "failed") else 202
    else:
        status = 202
    return JSONResponse(operations.operation_public(op).model_dump(mode="json"), status_code=status)
