"""`/v1/tenants/{name}/workflows`: start a workflow on one of the tenant's agents, or find one by id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse

from control_plane.api.deps import SessionDep, require_admin
from control_plane.services import routing

router = APIRouter(prefix="/v1/tenants", tags=["workflows"], dependencies=[Depends(require_admin)])


@router.post("/{name}/workflows/{workflow}")
def start_workflow(
    name: str, workflow: str, session: SessionDep, body: Annotated[dict[str, Any] | None, Body()] = None
) -> JSONResponse:
    status, answer = routing.start_workflow(session, name, workflow, body or {})
    return JSONResponse(answer, status_code=status)


@router.get("/{name}/workflows/{workflow_id}")
def find_workflow(
    name: str, workflow_id: str, session: SessionDep, wait: Annotated[float, Query(ge=0, le=300)] = 0
) -> dict[str, Any]:
    return routing.find_workflow(session, name, workflow_id, wait)
