"""The composition root: settings -> fleet DB, object storage, drivers -> the fleet's hands -> the reconciler, the
health monitor and the API. `litefleet serve` runs what `build_app` returns under uvicorn."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.engine import Engine

from control_plane.api import ROUTERS
from control_plane.dashboard import router as dashboard_router
from control_plane.db.engine import make_engine, migrate
from control_plane.drivers.docker import DockerDriver
from control_plane.errors import FleetError
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.health import HealthMonitor
from control_plane.reconciler.runners import runners
from control_plane.reconciler.worker import Reconciler
from control_plane.settings import Settings, admin_secret
from control_plane.storage.credentials import SeaweedCredentials
from control_plane.storage.replicas import ObjectStorage
from control_plane.storage.seaweed import embedded_store

log = structlog.get_logger("control_plane.app")


def probe_engine(engine_url: str) -> None:
    """Ping a node's engine before it is registered (EngineUnreachable when it does not answer)."""
    DockerDriver(engine_url, timeout=5).ping()


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
    app.state.token = settings.api_token.get_secret_value() if settings.api_token else None
    app.state.probe_engine = probe_engine
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(dashboard_router)

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


def build_fleet(settings: Settings) -> Fleet:
    store = embedded_store(settings)
    storage = ObjectStorage(settings.store_endpoint, settings.s3_admin_key, admin_secret(settings), settings.bucket)
    storage.ensure_bucket()
    return Fleet(make_engine(settings.fleet_database_url), settings, storage, SeaweedCredentials(store, storage))


def build_app(settings: Settings) -> FastAPI:
    return create_app(settings, build_fleet(settings))


def serve(settings: Settings) -> None:
    uvicorn.run(build_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
