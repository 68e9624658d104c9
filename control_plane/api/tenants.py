"""`/v1/tenants`: create, read, scale, evacuate, hibernate, wake, delete. Long actions answer with an operation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from control_plane.api.deps import SessionDep, TimeoutQuery, WaitQuery, accepted, require_admin, require_tenant
from control_plane.api.paging import DEFAULT_LIMIT, CursorQuery, LimitQuery, rows_answer
from control_plane.db.models import EvacuateRequest, OperationPublic, Page, ScaleRequest, TenantCreate, TenantPublic
from control_plane.services import tenants

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Depends(require_admin)])
# what a tenant's own API token may read (control_plane/api/deps.py require_tenant)
tenant_router = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Depends(require_tenant)])


@router.post("", status_code=202, response_model=OperationPublic)
def create_tenant(
    body: TenantCreate, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> JSONResponse:
    return accepted(session, tenants.create_tenant(session, body), wait, timeout)


@router.get("", response_model=Page[TenantPublic])
def list_tenants(session: SessionDep, limit: LimitQuery = DEFAULT_LIMIT, cursor: CursorQuery = None) -> Response:
    return rows_answer(*tenants.tenant_rows(session, limit, cursor))


@tenant_router.get("/{name}")
def get_tenant(name: str, session: SessionDep) -> TenantPublic:
    return tenants.get_tenant(session, name)


@router.post("/{name}/scale", status_code=202, response_model=OperationPublic)
def scale_tenant(
    name: str, body: ScaleRequest, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> JSONResponse:
    return accepted(session, tenants.scale_tenant(session, name, body.agents), wait, timeout)


@router.post("/{name}/evacuate", status_code=202, response_model=OperationPublic)
def evacuate_tenant(
    name: str,
    session: SessionDep,
    body: EvacuateRequest | None = None,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 600,
) -> JSONResponse:
    return accepted(session, tenants.evacuate_tenant(session, name, body or EvacuateRequest()), wait, timeout)


@router.post("/{name}/hibernate", status_code=202, response_model=OperationPublic)
def hibernate_tenant(
    name: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> JSONResponse:
    return accepted(session, tenants.hibernate_tenant(session, name), wait, timeout)


@router.post("/{name}/wake", status_code=202, response_model=OperationPublic)
def wake_tenant(name: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600) -> JSONResponse:
    return accepted(session, tenants.wake_tenant(session, name), wait, timeout)


@router.delete("/{name}", status_code=202, response_model=OperationPublic)
def delete_tenant(
    name: str,
    session: SessionDep,
    purge: Annotated[bool, Query(description="also delete every replica (default: keep them)")] = False,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 600,
) -> JSONResponse:
    return accepted(session, tenants.delete_tenant(session, name, purge), wait, timeout)
