"""The composition root: settings -> fleet DB, object storage, drivers -> the fleet's hands -> the reconciler, the
health monitor and the API. `litefleet serve` runs what `build_app` returns under uvicorn."""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import structlog
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from control_plane import metrics
from control_plane.api import ROUTERS
from control_plane.api.deps import require_admin
from control_plane.background import Background
from control_plane.dashboard import router as dashboard_router
from control_plane.db.engine import make_engine, migrate
from control_plane.db.models import NodeCreate
from control_plane.errors import BodyTooLarge, FleetError
from control_plane.fleet.incarnations import Fleet
from control_plane.observer import NoStateAt, ObserverError, ReplicaNotFound
from control_plane.observer import WorkflowNotInCopy as ObservedWorkflowNotFound
from control_plane.pki import credential_set
from control_plane.services.holds import Holds
from control_plane.services.nodes import EngineProbe
from control_plane.services.waits import Waits
from control_plane.settings import Settings, admin_secret, api_token
from control_plane.storage.credentials import SeaweedCredentials
from control_plane.storage.replicas import ObjectStorage
from control_plane.storage.seaweed import embedded_store

if TYPE_CHECKING:
    from control_plane.observer import Observer

log = structlog.get_logger("control_plane.app")

_HTTP_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
MAX_BODY_BYTES = 64 * 1024  # the largest body any route takes is a workflow start with its arguments


def _unusable(text: str) -> bool:
    """NUL or an unpaired surrogate: PostgreSQL cannot store it, UTF-8 (an agent's URL) cannot encode it."""
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


async def _unusable_text(request: Request) -> bool:
    """Whether the path, the query or any string (key or value) of a JSON body is `_unusable`. Such text reached
    the fleet DB or an agent URL and answered 500 (tests/fuzz/test_findings.py). A body that is not JSON is left
    to the route, which refuses it."""
    if _unusable(request.url.path) or any(
        _unusable(key) or _unusable(value) for key, value in request.query_params.multi_items()
    ):
        return True
    if "json" not in request.headers.get("content-type", ""):
        return False
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        return False
    pending = [body]
    while pending:  # iterative: a deeply nested body must not exhaust the stack here
        value = pending.pop()
        if isinstance(value, str) and _unusable(value):
            return True
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def engine_probe(settings: Settings) -> EngineProbe:
    """Pings a node's engine before it is registered, with the credentials it is registered with, and reads the
    runtimes it offers (EngineUnreachable when it does not answer or its URL is refused)."""

    def probe(node: NodeCreate) -> list[str]:
        from control_plane.drivers import DockerDriver  # on first use: the docker SDK is slow to import

        tls = credential_set(settings.engine_pki_dir, node.tls)
        driver = DockerDriver(node.engine_url, timeout=5, tls=tls, insecure=node.insecure)
        driver.ping()
        return driver.runtimes()

    return probe


def create_app(
    settings: Settings,
    fleet: Fleet | None = None,
    *,
    background: bool = True,
    observer: Observer | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """The API over the fleet DB at `settings.fleet_database_url`. With `background`, the reconciler, the
    node health monitor and the observer (following what the fleet DB says is placed) run inside the app's
    lifespan. `observer`, `engine`: made by the caller (tests), who also closes them; an engine the app makes
    itself is disposed when its lifespan ends."""
    token = api_token(settings, create=True)  # never None: the API is always authenticated
    url = settings.fleet_database_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    migrate(url)
    owns_engine = fleet is None and engine is None
    engine = fleet.engine if fleet is not None else engine or make_engine(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        work = Background(settings, fleet, app.state) if background and fleet is not None else None
        if work is not None:
            work.start()  # the API answers from now on; the background work comes up beside it
        log.info("control_plane.started", database=url.split("@")[-1], workers=settings.workers)
        yield
        if work is not None:
            work.stop()
        if owns_engine:  # its pooled connections end with the app, not when the collector gets to them
            engine.dispose()

    app = FastAPI(
        title="litefleet", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine = engine
    app.state.token = token
    app.state.probe_engine = engine_probe(settings)
    app.state.observer = observer
    app.state.waits = Waits(engine, limit=settings.max_waits, interval=settings.wait_poll_interval)
    app.state.operation_queued = lambda: None  # the reconciler's `wake` once it runs here (background.py)
    app.state.holds = Holds(
        engine, limit=settings.max_held_requests, timeout=settings.hold_timeout, interval=settings.hold_poll_interval
    )

    def followers() -> dict[str, int]:
        current: Observer | None = app.state.observer
        return dict(Counter(state.kind.value for state in current.followed())) if current is not None else {}

    app.state.metrics = metrics.registry(engine, followers, lambda: app.state.holds.held)

    # First of all routes: FastAPI builds an included router's routes when a request first walks past them
    # (~5 ms each), and a liveness probe should not wait for that.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:  # on the event loop: never queued behind the worker threads
        return {"status": "ok"}

    for router in ROUTERS:
        app.include_router(router)
    app.include_router(dashboard_router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_admin)])
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_admin)])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="litefleet API")

    @app.middleware("http")
    async def bounded_body(request: Request, call_next: Any) -> Any:
        """No request body over MAX_BODY_BYTES: refused before it is read (a declared length) or parsed."""
        declared = request.headers.get("content-length", "0")
        chunked = "transfer-encoding" in request.headers  # a body of unknown length: refused, not streamed in
        if chunked or not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            error = BodyTooLarge(f"a request body is at most {MAX_BODY_BYTES} bytes")
            return JSONResponse({"code": error.code, "message": str(error)}, status_code=error.status)
        if await _unusable_text(request):
            message = "text in a path, query or JSON body cannot hold NUL characters or unpaired surrogates"
            return JSONResponse({"code": "invalid_request", "message": message}, status_code=422)
        return await call_next(request)

    @app.exception_handler(FleetError)
    async def fleet_error(_: Request, exc: FleetError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(ObserverError)
    async def observer_error(_: Request, exc: ObserverError) -> JSONResponse:
        missing = isinstance(exc, (ReplicaNotFound, NoStateAt, ObservedWorkflowNotFound))
        return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=404 if missing else 503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        """Starlette's own refusals (an unknown path, a wrong method, a body nested too deep to parse) in the
        same envelope as ours."""
        if exc.status_code < 400:  # a redirect raised as an exception (the dashboard's "sign in first")
            return Response(status_code=exc.status_code, headers=exc.headers)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            {"code": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return JSONResponse({"code": "invalid_request", "message": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(httpx.HTTPError)
    async def agent_unreachable(_: Request, exc: httpx.HTTPError) -> JSONResponse:
        return JSONResponse({"code": "agent_unreachable", "message": f"agent did not answer: {exc}"}, status_code=502)

    return app


def build_fleet(settings: Settings) -> Fleet:
    """The fleet's hands. Nothing here calls the store: the bucket is checked by the background start."""
    store = embedded_store(settings)
    storage = ObjectStorage(settings.store_endpoint, settings.s3_admin_key, admin_secret(settings), settings.bucket)
    return Fleet(make_engine(settings.fleet_database_url), settings, storage, SeaweedCredentials(store, storage))


def build_app(settings: Settings) -> FastAPI:
    return create_app(settings, build_fleet(settings))


def serve(settings: Settings) -> None:
    """Build the app and serve it. The cyclic garbage collector is off until the app is built (the launcher turned
    it off before the imports: `cli/launch.py`): start-up allocates for good (modules, routes, models), so its passes
    found nothing to free and cost ~10% of the start. What was built is then frozen out of later passes. No
    websockets: nothing here speaks them, and uvicorn would load a websockets library to offer them."""
    try:
        app = build_app(settings)
    finally:
        gc.freeze()
        gc.enable()
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning", ws="none")
