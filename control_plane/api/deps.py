"""What every route depends on: a session, the caller (the admin, or one tenant: `CurrentPrincipal`), the engine probe,
and the one way a long action answers (`202` with the operation, or `200` once it finished with `?wait=true`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from control_plane.api.waiting import OperationWait, Queued, wait_slot
from control_plane.db.models import Operation
from control_plane.services import operations, tokens
from control_plane.services.nodes import EngineProbe
from control_plane.services.tokens import Principal

if TYPE_CHECKING:
    from control_plane.observer import Observer


def _session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


# declared in the OpenAPI spec (every route but /healthz needs it); parsed here, checked by services/tokens.py
_bearer = HTTPBearer(auto_error=False, description="the admin token, or a tenant's API token (`lft_...`)")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def current_principal(request: Request, session: SessionDep, bearer: BearerDep) -> Principal:
    """The caller (401 without a valid token): the admin token (settings.api_token) or one tenant's API token, looked
    up on every request, so a revoked token is refused from the next request on."""
    return tokens.authenticate(session, bearer.credentials if bearer else "", request.app.state.token)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_admin(principal: CurrentPrincipal) -> Principal:
    """Admin routes (every router's default): a tenant token gets 403."""
    return tokens.require_admin(principal)


def require_tenant(name: Annotated[str, Path()], principal: CurrentPrincipal) -> Principal:
    """Routes of one tenant (`/v1/tenants/{name}/...`): the admin or a token of that tenant; another tenant's token
    gets 404, the answer for a tenant that does not exist."""
    return tokens.require_tenant(principal, name)


AdminPrincipal = Annotated[Principal, Depends(require_admin)]
TenantPrincipal = Annotated[Principal, Depends(require_tenant)]


def _probe(request: Request) -> EngineProbe:
    probe: EngineProbe = request.app.state.probe_engine
    return probe


def _observer(request: Request) -> Observer | None:
    observer: Observer | None = request.app.state.observer
    return observer


if TYPE_CHECKING:
    ObserverDep = Annotated[Observer | None, Depends(_observer)]
else:  # FastAPI reads this annotation when it builds the routes: not a reason to load the observer before serving
    ObserverDep = Annotated[Any, Depends(_observer)]
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
    return Queued(operations.operation_public(op).model_dump(mode="json"), status_code=202)
