"""The agent's HTTP API over one Runtime. Routes are thin; errors are JSON `{"code", "message"}`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from agent_image import metrics
from agent_image.errors import AgentError
from agent_image.runtime import STATUSES, Runtime

log = structlog.get_logger("agent_image.server")


class StartWorkflow(BaseModel):
    id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def create_app(open_runtime: Callable[[], Runtime], *, replication: Any = None) -> FastAPI:
    """`open_runtime` is called at startup (so a second agent on the same file fails before serving).
    `replication`, when given, reports Litestream lag for /readyz and /metrics (see agent_image.replication)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.monotonic()
        runtime = open_runtime()
        app.state.runtime = runtime
        report = await asyncio.to_thread(runtime.recover)
        log.info("agent.ready", seconds=round(time.monotonic() - started, 3), **report)
        try:
            yield
        finally:
            stuck = await asyncio.to_thread(runtime.close)
            log.info("agent.stopped", stuck=stuck)

    app = FastAPI(title="litefleet agent", lifespan=lifespan)

    def get_runtime(request: Request) -> Runtime:
        return request.app.state.runtime

    RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

    @app.exception_handler(AgentError)
    async def agent_error(_: Request, exc: AgentError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg')}")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(runtime: RuntimeDep) -> JSONResponse:
        detail: dict[str, Any] = {
            "ready": runtime.ready and not runtime.draining,
            "recovered": runtime.ready,
            "draining": runtime.draining,
            "bundle": runtime.bundle.name,
            "bundle_version": runtime.bundle.version,
            "schema_version": runtime.store.schema_version,
        }
        if replication is not None:
            detail["replication"] = replication.status()
        return JSONResponse(detail, status_code=200 if detail["ready"] else 503)

    @app.get("/metrics")
    def prometheus(runtime: RuntimeDep) -> PlainTextResponse:
        return PlainTextResponse(metrics.render(runtime, replication), media_type=metrics.CONTENT_TYPE)

    @app.post("/v1/workflows/{name}")
    def start(name: str, body: StartWorkflow, runtime: RuntimeDep) -> JSONResponse:
        existed = body.id is not None and _exists(runtime, body.id)
        handle = runtime.start(name, body.args, body.kwargs, id=body.id)
        return JSONResponse(runtime.get(handle.id).to_dict(), status_code=200 if existed else 201)

    @app.get("/v1/workflows")
    def list_workflows(
        runtime: RuntimeDep,
        status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
        name: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        rows = runtime.list_workflows(status=status, name=name, limit=limit)
        return {"workflows": [row.to_dict() for row in rows], "counts": runtime.counts()}

    @app.get("/v1/workflows/{workflow_id}")
    async def get(
        workflow_id: str, runtime: RuntimeDep, wait: Annotated[float, Query(ge=0, le=300)] = 0
    ) -> dict[str, Any]:
        """`?wait=N` long-polls up to N seconds for the workflow to settle."""
        if wait:
            return (await asyncio.to_thread(runtime.wait, workflow_id, wait)).to_dict()
        return runtime.get(workflow_id).to_dict()

    @app.get("/v1/workflows/{workflow_id}/steps")
    def steps(workflow_id: str, runtime: RuntimeDep) -> dict[str, Any]:
        return {"steps": [step.to_dict() for step in runtime.steps(workflow_id)]}

    @app.post("/v1/workflows/{workflow_id}/cancel")
    def cancel(workflow_id: str, runtime: RuntimeDep) -> dict[str, Any]:
        return runtime.cancel(workflow_id).to_dict()

    @app.post("/v1/workflows/{workflow_id}/fork")
    def fork(
        workflow_id: str,
        runtime: RuntimeDep,
        from_step: Annotated[int, Query(ge=1)],
        new_id: str | None = None,
    ) -> JSONResponse:
        handle = runtime.fork(workflow_id, from_step, new_id=new_id)
        return JSONResponse(runtime.get(handle.id).to_dict(), status_code=201)

    @app.post("/v1/workflows/{workflow_id}/messages/{topic}", status_code=202)
    async def message(workflow_id: str, topic: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "invalid_request", "the message body must be JSON")  # type: ignore[return-value]
        runtime.send(workflow_id, body, topic)
        return {"workflow_id": workflow_id, "topic": topic, "accepted": True}

    @app.get("/v1/workflows/{workflow_id}/events/{key}")
    def event(workflow_id: str, key: str, runtime: RuntimeDep) -> dict[str, Any]:
        runtime.get(workflow_id)
        return {"workflow_id": workflow_id, "key": key, "value": runtime.get_event(workflow_id, key)}

    @app.post("/admin/drain")
    def drain(runtime: RuntimeDep) -> dict[str, Any]:
        in_flight = runtime.drain()
        log.info("agent.draining", in_flight=in_flight)
        return {"draining": True, "in_flight": in_flight}

    return app


def _exists(runtime: Runtime, workflow_id: str) -> bool:
    try:
        runtime.get(workflow_id)
    except AgentError:
        return False
    return True
