"""`/v1/tenants/{name}/workflows`: start a workflow on one of the tenant's agents, find one by id, list them (what
no running agent holds comes from the observer); `/v1/tenants/{name}/history`: the tenant as of a past time;
`/v1/workflows/problems`: ERROR and BLOCKED workflows across the fleet."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from control_plane.api.deps import ObserverDep, SessionDep, require_admin, require_tenant
from control_plane.api.waiting import wait_seconds_slot
from control_plane.services import observed, routing
from control_plane.services.holds import Holds

# a tenant's own API token may use every route here (control_plane/api/deps.py require_tenant)
router = APIRouter(prefix="/v1/tenants", tags=["workflows"], dependencies=[Depends(require_tenant)])
fleet_router = APIRouter(prefix="/v1/workflows", tags=["workflows"], dependencies=[Depends(require_admin)])

AtQuery = Annotated[dt.datetime, Query(description="ISO 8601 time; without a zone: UTC")]
AgentQuery = Annotated[int | None, Query(ge=0, le=63, description="one agent ordinal; default: all")]
LimitQuery = Annotated[int, Query(ge=1, le=1000)]


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _holds(request: Request) -> Holds:
    holds: Holds = request.app.state.holds
    return holds


EngineDep = Annotated[Engine, Depends(_engine)]
HoldsDep = Annotated[Holds, Depends(_holds)]  # requests held while their agent is moved (503 agent_moving past it)
WaitSeconds = Annotated[float, Depends(wait_seconds_slot)]  # a slot of the capped waits when > 0 (429 past it)

# The routes that call agents run on the event loop (routing is async): a frozen agent holds no worker thread
# and no DB connection, only its own request.


@router.post("/{name}/workflows/{workflow}")
async def start_workflow(
    name: str,
    workflow: str,
    engine: EngineDep,
    holds: HoldsDep,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> JSONResponse:
    status, answer = await routing.start_workflow(engine, name, workflow, body or {}, holds)
    return JSONResponse(answer, status_code=status)


@router.get("/{name}/workflows/{workflow_id}")
async def find_workflow(
    name: str, workflow_id: str, engine: EngineDep, observer: ObserverDep, holds: HoldsDep, wait: WaitSeconds = 0
) -> dict[str, Any]:
    return await routing.find_workflow(engine, name, workflow_id, wait, observer, holds)


@router.get("/{name}/workflows")
async def list_workflows(
    name: str, engine: EngineDep, observer: ObserverDep, status: str | None = None, limit: LimitQuery = 100
) -> dict[str, Any]:
    return await routing.list_workflows(engine, name, status, limit, observer)


@router.get("/{name}/history")
def history(
    name: str,
    at: AtQuery,
    session: SessionDep,
    observer: ObserverDep,
    agent: AgentQuery = None,
    limit: LimitQuery = 100,
) -> dict[str, Any]:
    return observed.history(session, observer, name, at, agent, limit)


@router.get("/{name}/history/{workflow_id}")
def history_workflow(
    name: str,
    workflow_id: str,
    session: SessionDep,
    observer: ObserverDep,
    at: Annotated[dt.datetime | None, Query(description="ISO 8601; default: the newest state")] = None,
    agent: AgentQuery = None,
) -> dict[str, Any]:
    return observed.history_workflow(session, observer, name, workflow_id, at, agent)


@fleet_router.get("/problems")
def problems(observer: ObserverDep, limit_per_agent: LimitQuery = 100) -> dict[str, Any]:
    return observed.problems(observer, limit_per_agent)
