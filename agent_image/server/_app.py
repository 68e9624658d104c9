"""The agent's HTTP API over one Runtime. Routes are thin; errors are JSON `{"code", "message"}`.

Starlette, not FastAPI, on purpose: this process runs once per tenant agent, and FastAPI with pydantic costs
~16 MiB more RSS per process (measured: 57 MiB vs 41 MiB idle, see README "Benchmarks"). The API has four
small bodies; they are validated by hand (`_input`). The control plane, which runs once, uses FastAPI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent_image._errors import AgentError, InvalidRequest, LeaseUnconfirmed, ReplicationUnconfirmed
from agent_image._runtime import Runtime
from agent_image._status import STATUSES
from agent_image.server import _metrics
from agent_image.server._auth import BearerAuth, Tokens
from agent_image.server._input import json_body, query_number, start_body, start_wait

log = structlog.get_logger("agent_image.server")

Handler = Callable[[Request, Runtime], Any]
DURABILITY_MODES = ("local", "replicated")


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"retry-after": str(extra.pop("retry_after"))} if "retry_after" in extra else None
    return JSONResponse({"code": code, "message": message, **extra}, status_code=status, headers=headers)


def create_app(
    open_runtime: Callable[[], Runtime],
    *,
    replication: Any = None,
    tokens: Tokens | None = None,
    lease: Any = None,
    confirm_replicated: Callable[[float], None] | None = None,
    durability: str = "local",
    durability_timeout: float = 10.0,
) -> Starlette:
    """`open_runtime` is called at startup. The rest is optional, each for a replicated agent in a container:

    - `replication`: reports Litestream's progress for /readyz and /metrics (`status() -> dict`).
    - `tokens`: the agent and admin tokens every route but /healthz requires (None: no authentication, only for a
      standalone agent on loopback).
    - `lease`: the CURRENT lease (`held() -> bool`, `status() -> dict`, `retry_after() -> int`): while not held,
      writes (start, cancel, fork, messages) answer 503 `lease_unconfirmed` and /readyz is not ready.
    - `confirm_replicated(timeout)`: returns once the replica holds everything committed before the call, raises
      ReplicationUnconfirmed otherwise; needed for `?durability=replicated` (default `durability`)."""
    state: dict[str, Runtime] = {}
    if durability not in DURABILITY_MODES or (durability == "replicated" and confirm_replicated is None):
        raise ValueError(f"durability {durability!r} needs one of {DURABILITY_MODES} and, if replicated, a confirmer")

    def lease_refused(after: bool) -> Response:
        assert lease is not None
        if after:
            message = (
                "this agent lost its CURRENT lease while the request ran: the change was made locally but is NOT "
                "acknowledged and may be lost; retry through the control plane (ids make starts idempotent)"
            )
        else:
            message = "this agent cannot confirm its CURRENT lease: it acknowledges no writes; retry later"
        exc = LeaseUnconfirmed(message)
        return _error(exc.status, exc.code, message, retry_after=lease.retry_after())

    def route(path: str, handler: Handler, method: str = "GET", *, blocking: bool = True, write: bool = False) -> Route:
        """Wrap `handler(request, runtime)`: errors become JSON, blocking handlers run in a worker thread.
        A `write` is acknowledged only under a held lease, checked before it runs and again before answering."""

        async def endpoint(request: Request) -> Response:
            if write and lease is not None and not lease.held():
                return lease_refused(after=False)
            try:
                if blocking:
                    result = await run_in_threadpool(handler, request, state["runtime"])
                else:
                    result = await handler(request, state["runtime"])
            except AgentError as exc:
                if isinstance(exc, ReplicationUnconfirmed) and exc.workflow_id:
                    return _error(exc.status, exc.code, str(exc), workflow_id=exc.workflow_id)
                return _error(exc.status, exc.code, str(exc))
            if write and lease is not None and not lease.held():
                return lease_refused(after=True)
            return result if isinstance(result, Response) else JSONResponse(result)

        return Route(path, endpoint, methods=[method])

    def readyz(_: Request, runtime: Runtime) -> Response:
        leased = lease is None or lease.held()
        reason = (
            "recovering"
            if not runtime.ready
            else "draining"
            if runtime.draining
            else "lease_unconfirmed"
            if not leased
            else None
        )
        detail: dict[str, Any] = {
            "ready": reason is None,
            "reason": reason,
            "recovered": runtime.ready,
            "draining": runtime.draining,
            "bundle": runtime.bundle.name,
            "bundle_version": runtime.bundle.version,
            "schema_version": runtime.store.schema_version,
            "durability": durability,
        }
        if lease is not None:
            detail["lease"] = lease.status()
        if replication is not None:
            detail["replication"] = replication.status()
        return JSONResponse(detail, status_code=200 if detail["ready"] else 503)

    def prometheus(_: Request, runtime: Runtime) -> Response:
        body, content_type = _metrics.render(runtime, replication, lease)
        return Response(body, media_type=content_type)

    async def start(request: Request, runtime: Runtime) -> Response:
        """`?wait=N|true` waits up to N (true: 60) seconds for the result; `?durability=replicated` answers only
        once the replica holds the start (and, with wait, the state after the wait, the result if it finished)."""
        workflow_id, args, kwargs = start_body(await json_body(request))
        name = request.path_params["name"]
        wait = start_wait(request)
        mode = request.query_params.get("durability", durability)
        if mode not in DURABILITY_MODES:
            raise InvalidRequest(f"durability must be one of {', '.join(DURABILITY_MODES)}")
        if mode == "replicated" and confirm_replicated is None:
            raise InvalidRequest("this agent does not replicate: durability=replicated is not available")

        def run() -> Response:
            existed = workflow_id is not None and runtime.exists(workflow_id)
            handle = runtime.start(name, args, kwargs, id=workflow_id)
            status = runtime.wait(handle.id, wait) if wait else runtime.get(handle.id)
            if mode == "replicated":
                assert confirm_replicated is not None
                try:
                    confirm_replicated(durability_timeout)
                except ReplicationUnconfirmed as exc:
                    unconfirmed = ReplicationUnconfirmed(
                        f"workflow {handle.id} was started and committed locally, but {exc}: it still exists and "
                        "runs here, and may be lost only if this agent's node is lost; check it or retry the same "
                        "id later",
                        timed_out=exc.timed_out,
                        workflow_id=handle.id,
                    )
                    raise unconfirmed from None
            return JSONResponse(status.to_dict(), status_code=200 if existed else 201)

        return await run_in_threadpool(run)

    def list_workflows(request: Request, runtime: Runtime) -> dict[str, Any]:
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        limit = int(query_number(request, "limit", 100, 1, 1000))
        rows = runtime.list_workflows(status=status, name=request.query_params.get("name"), limit=limit)
        return {"workflows": [row.to_dict() for row in rows], "counts": runtime.counts()}

    def get(request: Request, runtime: Runtime) -> dict[str, Any]:
        """`?wait=N` long-polls up to N seconds for the workflow to settle."""
        workflow_id = request.path_params["workflow_id"]
        wait = query_number(request, "wait", 0, 0, 300)
        return (runtime.wait(workflow_id, wait) if wait else runtime.get(workflow_id)).to_dict()

    def steps(request: Request, runtime: Runtime) -> dict[str, Any]:
        return {"steps": [step.to_dict() for step in runtime.steps(request.path_params["workflow_id"])]}

    def cancel(request: Request, runtime: Runtime) -> dict[str, Any]:
        return runtime.cancel(request.path_params["workflow_id"]).to_dict()

    def fork(request: Request, runtime: Runtime) -> Response:
        from_step = int(query_number(request, "from_step", None, 1, 1_000_000))
        handle = runtime.fork(request.path_params["workflow_id"], from_step, new_id=request.query_params.get("new_id"))
        return JSONResponse(runtime.get(handle.id).to_dict(), status_code=201)

    async def message(request: Request, runtime: Runtime) -> Response:
        body = await json_body(request)
        workflow_id, topic = request.path_params["workflow_id"], request.path_params["topic"]
        await run_in_threadpool(runtime.send, workflow_id, body, topic)
        return JSONResponse({"workflow_id": workflow_id, "topic": topic, "accepted": True}, status_code=202)

    def event(request: Request, runtime: Runtime) -> dict[str, Any]:
        workflow_id, key = request.path_params["workflow_id"], request.path_params["key"]
        runtime.get(workflow_id)
        return {"workflow_id": workflow_id, "key": key, "value": runtime.get_event(workflow_id, key)}

    def drain(_: Request, runtime: Runtime) -> dict[str, Any]:
        in_flight = runtime.drain()
        log.info("agent.draining", in_flight=in_flight)
        return {"draining": True, "in_flight": in_flight}

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        started = time.monotonic()
        runtime = open_runtime()
        state["runtime"] = runtime
        report = await asyncio.to_thread(runtime.recover)
        log.info("agent.ready", seconds=round(time.monotonic() - started, 3), **report)
        try:
            yield
        finally:
            stuck = await asyncio.to_thread(runtime.close)
            log.info("agent.stopped", stuck=stuck)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "not_found", f"no route {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("agent.internal_error", method=request.method, path=request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__} while serving {request.url.path}")

    routes = [
        Route("/healthz", healthz),
        route("/readyz", readyz),
        route("/metrics", prometheus),
        route("/v1/workflows", list_workflows),
        route("/v1/workflows/{name}", start, "POST", blocking=False, write=True),
        route("/v1/workflows/{workflow_id}", get),
        route("/v1/workflows/{workflow_id}/steps", steps),
        route("/v1/workflows/{workflow_id}/cancel", cancel, "POST", write=True),
        route("/v1/workflows/{workflow_id}/fork", fork, "POST", write=True),
        route("/v1/workflows/{workflow_id}/messages/{topic}", message, "POST", blocking=False, write=True),
        route("/v1/workflows/{workflow_id}/events/{key}", event),
        route("/admin/drain", drain, "POST"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: not_allowed,
        Exception: internal,
    }
    middleware = [Middleware(BearerAuth, tokens=tokens)] if tokens is not None else []
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers, middleware=middleware)
