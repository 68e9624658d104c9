"""The control plane's HTTP API (`/v1`). Routes are one sentence each; `services.py` holds the logic.

Long actions answer `202` with the operation to poll; `?wait=true` waits for it (up to `timeout` seconds) and
answers `200` with the finished operation. Errors are `{"code", "message"}` with a stable code."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane import services
from control_plane.db import make_engine, migrate
from control_plane.errors import FleetError, Unauthorized
from control_plane.fleet import Fleet
from control_plane.health import HealthMonitor
from control_plane.models import (
    EvacuateRequest,
    EventPublic,
    NodeCreate,
    NodePublic,
    NodeState,
    Operation,
    OperationPublic,
    ScaleRequest,
    TenantCreate,
    TenantPublic,
)
from control_plane.operations import runners
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings

log = structlog.get_logger("control_plane.api")


def _session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


def _require_admin(request: Request) -> str:
    """The caller, when the API has a token; every /v1 route depends on it."""
    token: str | None = request.app.state.token
    if token is None:
        return "anonymous"
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("send Authorization: Bearer <LITEFLEET_API_TOKEN>")
    return "admin"


SessionDep = Annotated[Session, Depends(_session)]
WaitQuery = Annotated[bool, Query(description="wait for the operation to finish")]
TimeoutQuery = Annotated[float, Query(ge=0, le=3600, description="seconds to wait with wait=true")]


def _accepted(session: Session, op: Operation, wait: bool, timeout: float) -> JSONResponse:
    if wait:
        op = services.wait_operation(session, op.id, timeout)
        status = 200 if op.state.value in ("succeeded", "failed") else 202
    else:
        status = 202
    return JSONResponse(services.operation_public(op).model_dump(mode="json"), status_code=status)


nodes = APIRouter(prefix="/v1/nodes", tags=["nodes"], dependencies=[Depends(_require_admin)])


@nodes.post("", status_code=201)
def register_node(body: NodeCreate, session: SessionDep, request: Request) -> NodePublic:
    return services.register_node(session, body, request.app.state.pki_dir)


@nodes.get("")
def list_nodes(session: SessionDep) -> list[NodePublic]:
    return services.list_nodes(session)


@nodes.get("/{name}")
def get_node(name: str, session: SessionDep) -> NodePublic:
    return services.get_node(session, name)


@nodes.post("/{name}/cordon")
def cordon_node(name: str, session: SessionDep) -> NodePublic:
    return services.set_node_state(session, name, NodeState.cordoned)


@nodes.post("/{name}/uncordon")
def uncordon_node(name: str, session: SessionDep) -> NodePublic:
    return services.set_node_state(session, name, NodeState.ready)


@nodes.post("/{name}/drain", status_code=202, response_model=OperationPublic)
def drain_node(name: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600) -> JSONResponse:
    return _accepted(session, services.drain_node(session, name), wait, timeout)


@nodes.delete("/{name}", status_code=204)
def remove_node(name: str, session: SessionDep) -> None:
    services.remove_node(session, name)


tenants = APIRouter(prefix="/v1/tenants", tags=["tenants"], dependencies=[Depends(_require_admin)])


@tenants.post("", status_code=202, response_model=OperationPublic)
def create_tenant(
    body: TenantCreate, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> JSONResponse:
    return _accepted(session, services.create_tenant(session, body), wait, timeout)


@tenants.get("")
def list_tenants(session: SessionDep) -> list[TenantPublic]:
    return services.list_tenants(session)


@tenants.get("/{name}")
def get_tenant(name: str, session: SessionDep) -> TenantPublic:
    return services.get_tenant(session, name)


@tenants.post("/{name}/scale", status_code=202, response_model=OperationPublic)
def scale_tenant(
    name: str, body: ScaleRequest, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> JSONResponse:
    return _accepted(session, services.scale_tenant(session, name, body.agents), wait, timeout)


@tenants.post("/{name}/evacuate", status_code=202, response_model=OperationPublic)
def evacuate_tenant(
    name: str,
    session: SessionDep,
    body: EvacuateRequest | None = None,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 600,
) -> JSONResponse:
    return _accepted(session, services.evacuate_tenant(session, name, body or EvacuateRequest()), wait, timeout)


@tenants.post("/{name}/hibernate", status_code=202, response_model=OperationPublic)
def hibernate_tenant(
    name: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> JSONResponse:
    return _accepted(session, services.hibernate_tenant(session, name), wait, timeout)


@tenants.post("/{name}/wake", status_code=202, response_model=OperationPublic)
def wake_tenant(name: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600) -> JSONResponse:
    return _accepted(session, services.wake_tenant(session, name), wait, timeout)


@tenants.delete("/{name}", status_code=202, response_model=OperationPublic)
def delete_tenant(
    name: str,
    session: SessionDep,
    purge: Annotated[bool, Query(description="also delete every replica (default: keep them)")] = False,
    wait: WaitQuery = False,
    timeout: TimeoutQuery = 600,
) -> JSONResponse:
    return _accepted(session, services.delete_tenant(session, name, purge), wait, timeout)


@tenants.post("/{name}/workflows/{workflow}", tags=["workflows"])
def start_workflow(
    name: str, workflow: str, session: SessionDep, body: Annotated[dict[str, Any] | None, Body()] = None
) -> JSONResponse:
    status, answer = services.start_workflow(session, name, workflow, body or {})
    return JSONResponse(answer, status_code=status)


@tenants.get("/{name}/workflows/{workflow_id}", tags=["workflows"])
def find_workflow(
    name: str, workflow_id: str, session: SessionDep, wait: Annotated[float, Query(ge=0, le=300)] = 0
) -> dict[str, Any]:
    return services.find_workflow(session, name, workflow_id, wait)


operations = APIRouter(prefix="/v1/operations", tags=["operations"], dependencies=[Depends(_require_admin)])


@operations.get("")
def list_operations(
    session: SessionDep,
    tenant: str | None = None,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[OperationPublic]:
    return [services.operation_public(op) for op in services.list_operations(session, tenant, state, limit)]


@operations.get("/{op_id}")
def get_operation(
    op_id: str, session: SessionDep, wait: WaitQuery = False, timeout: TimeoutQuery = 600
) -> OperationPublic:
    op = services.wait_operation(session, op_id, timeout) if wait else services.get_operation(session, op_id)
    return services.operation_public(op)


events = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[Depends(_require_admin)])


@events.get("")
def list_events(
    session: SessionDep,
    tenant: str | None = None,
    node: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> list[EventPublic]:
    return services.list_events(session, tenant, node, kind, since, limit)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(settings: Settings, fleet: Fleet | None = None, *, background: bool = True) -> FastAPI:
    """The API over the fleet DB at `settings.fleet_database_url`. With `background`, the reconciler and the
    node health monitor run inside the app's lifespan."""
    if settings.api_token is None and not _loopback(settings.api_host):
        raise ValueError(f"LITEFLEET_API_TOKEN must be set to serve on {settings.api_host} (not a loopback address)")
    url = settings.fleet_database_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    migrate(url)
    engine: Engine = fleet.engine if fleet is not None else make_engine(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers: list[Any] = []
        if background and fleet is not None:
            reconciler = Reconciler(engine, runners(fleet), workers=settings.workers, lease=settings.lease_seconds)
            monitor = HealthMonitor(engine, fleet, settings)
            workers = [reconciler, monitor]
            for worker in workers:
                worker.start()
        log.info("control_plane.started", database=url.split("@")[-1], workers=settings.workers)
        yield
        for worker in workers:
            worker.stop()

    app = FastAPI(title="litefleet", version="0.1.0", lifespan=lifespan)
    app.state.engine = engine
    app.state.pki_dir = settings.engine_pki_dir
    app.state.token = settings.api_token.get_secret_value() if settings.api_token else None
    for router in (nodes, tenants, operations, events):
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(FleetError)
    async def fleet_error(_: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"code": "invalid_request", "message": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(httpx.HTTPError)
    async def agent_unreachable(_: Request, exc: httpx.HTTPError) -> JSONResponse:
        return JSONResponse({"code": "agent_unreachable", "message": f"agent did not answer: {exc}"}, status_code=502)

    return app
