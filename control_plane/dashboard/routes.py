"""`/ui`: the fleet overview, a tenant's history, an operation's live step log and the live event stream, each a
server-rendered page over `control_plane.services.overview`; the two live ones are fed by server-sent events."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.dashboard import plots
from control_plane.dashboard.auth import COOKIE, require_viewer, safe_next, session_value, token_matches
from control_plane.dashboard.history import LagHistory
from control_plane.services import observed, overview
from control_plane.services.operations import get_operation

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

T = TypeVar("T")

POLL_S = 0.5  # how often a stream looks for new rows
KEEPALIVE_EVERY = 30  # a comment line after 15 s without events
SAMPLE_EVERY = 4  # a stream also samples every agent's lag for the lag charts at every 4th poll (2 s)
MAX_LIFETIME_S = 300.0  # a stream ends after this; the browser's EventSource reconnects where it left off


def _clock(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def _ago(at: float | None) -> str:
    if at is None:
        return "never"
    seconds = max(0.0, time.time() - at)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


@cache
def _templates() -> Jinja2Templates:
    """Made at the first page: Jinja2 is not loaded before the API serves."""
    from fastapi.templating import Jinja2Templates

    made = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    made.env.filters["clock"] = _clock
    made.env.filters["ago"] = _ago
    return made


router = APIRouter(include_in_schema=False)
pages = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_viewer)])


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _lag(request: Request) -> LagHistory:
    history: LagHistory | None = getattr(request.app.state, "lag_history", None)
    if history is None:
        history = request.app.state.lag_history = LagHistory()
    return history


async def _read(engine: Engine, read: Callable[[Session], T]) -> T:
    """One read in a worker thread, on a session that is closed again before the answer returns."""

    def run() -> T:
        with Session(engine) as session:
            return read(session)

    return await run_in_threadpool(run)


EngineDep = Annotated[Engine, Depends(_engine)]
LagDep = Annotated[LagHistory, Depends(_lag)]
LifetimeQuery = Annotated[float, Query(gt=0, le=MAX_LIFETIME_S)]


# -- login ----------------------------------------------------------------------------------------------------------


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    return _templates().TemplateResponse(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/ui/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode(errors="replace"))
    given, target = form.get("token", [""])[0].strip(), safe_next(form.get("next", [None])[0])
    token: str | None = request.app.state.token
    if not token_matches(request, given):
        context = {"next": target, "error": "That is not this control plane's API token."}
        return _templates().TemplateResponse(request, "login.html", context, status_code=401)
    answer = RedirectResponse(target, status_code=303)
    if token is not None:
        answer.set_cookie(
            COOKIE,
            session_value(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
    return answer


@router.post("/ui/logout")
def logout() -> RedirectResponse:
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.delete_cookie(COOKIE, path="/")
    return answer


# -- pages ----------------------------------------------------------------------------------------------------------


@pages.get("", response_class=HTMLResponse)
async def fleet(request: Request, engine: EngineDep, lag: LagDep) -> Response:
    view = await _read(engine, overview.fleet_overview)
    downtimes = await _read(engine, overview.move_downtimes)
    lag.record(view.agents)
    running = {f"{agent.tenant}/{agent.ordinal}": agent.tenant for agent in view.agents if agent.state == "running"}
    alerts = list(view.alerts) + [
        overview.Alert(
            "lag_growing", key, f"{key}: lag grew at each of its last samples", f"/ui/tenants/{running[key]}"
        )
        for key in lag.growing()
        if key in running  # an agent that stopped keeps its last samples, but nothing is falling behind any more
    ]
    durations = [
        (f"{op.kind.value} {op.tenant or op.node or ''} {op.id[:6]}", op.finished_at - op.created_at)
        for op in reversed(view.operations[:15])
        if op.finished_at is not None
    ]
    context = {
        "view": view,
        "alerts": alerts,
        "lag_chart": _lag_chart(lag, ""),
        "durations_chart": plots.bar_chart(durations, unit="s"),
        "downtime_chart": _downtime_chart(downtimes),
    }
    return _templates().TemplateResponse(request, "overview.html", context)


@pages.get("/tenants/{name}", response_class=HTMLResponse)
async def tenant(name: str, request: Request, engine: EngineDep, lag: LagDep) -> Response:
    history = await _read(engine, lambda session: overview.tenant_history(session, name))
    lag.record(history.tenant.placements)
    workflows = await run_in_threadpool(
        observed.tenant_workflows, request.app.state.observer, name, history.tenant.placements
    )
    moves = [(op.id, op.downtime_s) for op in history.operations if op.downtime_s]
    durations = [
        (f"{op.kind} {op.id[:6]}", op.duration_s) for op in history.operations[-15:] if op.duration_s is not None
    ]
    context = {
        "history": history,
        "workflows": workflows,
        "lag_chart": _lag_chart(lag, f"{name}/"),
        "durations_chart": plots.bar_chart(durations, unit="s"),
        "downtime_chart": _downtime_chart(moves[-10:]),
    }
    return _templates().TemplateResponse(request, "tenant.html", context)


@pages.get("/operations/{op_id}", response_class=HTMLResponse)
async def operation(op_id: str, request: Request, engine: EngineDep) -> Response:
    op = await _read(engine, lambda session: overview.operation_summary(get_operation(session, op_id)))
    steps = await _read(engine, lambda session: overview.steps_since(session, op_id, 0))
    context = {"op": op, "steps": steps.steps, "finished": steps.finished}
    return _templates().TemplateResponse(request, "operation.html", context)


@pages.get("/events", response_class=HTMLResponse)
async def events(request: Request, engine: EngineDep) -> Response:
    def read(session: Session) -> tuple[list[Any], int]:
        newest = overview.latest_event_id(session)
        return overview.events_after(session, max(0, newest - 100), 100), newest

    recent, newest = await _read(engine, read)
    context = {"events": list(reversed(recent)), "newest": newest}
    return _templates().TemplateResponse(request, "events.html", context)


def _lag_chart(lag: LagHistory, prefix: str) -> Any:
    series = lag.series(prefix)
    return plots.line_chart(
        {
            key: [(sample.at, sample.lag_seconds) for sample in samples if sample.lag_seconds is not None]
            for key, samples in series.items()
        },
        unit="s since the store confirmed a sync",
    )


def _downtime_chart(moves: list[tuple[str, dict[str, float]]]) -> Any:
    bars = [(f"{agent} ({op_id[:6]})", seconds) for op_id, per_agent in moves for agent, seconds in per_agent.items()]
    return plots.bar_chart(bars[-20:], unit="s")


# -- live streams (server-sent events) ------------------------------------------------------------------------------


async def _sample(engine: Engine, lag: LagHistory, tick: int) -> None:
    if tick % SAMPLE_EVERY == 0:
        lag.record(await _read(engine, overview.list_agents))


def _sse(kind: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def _resume_from(request: Request, after: int | None) -> int | None:
    last = request.headers.get("last-event-id")
    if last is not None and last.isdigit():
        return int(last)
    return after


def _stream(body: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@pages.get("/operations/{op_id}/stream")
async def operation_stream(
    op_id: str,
    request: Request,
    engine: EngineDep,
    lag: LagDep,
    after: int | None = None,
    lifetime: LifetimeQuery = 120,
) -> StreamingResponse:
    """The operation's steps after the `after`-th (or the Last-Event-ID the browser resends), as `step` events
    whose id is the step's position; `done` when the operation finished."""
    await _read(engine, lambda session: get_operation(session, op_id))  # 404 before the stream starts

    async def body() -> AsyncIterator[str]:
        count = _resume_from(request, after) or 0
        deadline = time.monotonic() + lifetime
        yield "retry: 1000\n\n"
        for tick in itertools.count():
            await _sample(engine, lag, tick)
            news = await _read(engine, partial(overview.steps_since, op_id=op_id, count=count))
            for index, step in enumerate(news.steps, start=count + 1):
                yield _sse("step", step, index)
            count = news.total
            if news.finished:
                yield _sse("done", {"state": news.state.value})
                return
            if time.monotonic() > deadline or await request.is_disconnected():
                return
            await asyncio.sleep(POLL_S)

    return _stream(body())


@pages.get("/events/stream")
async def events_stream(
    request: Request, engine: EngineDep, lag: LagDep, after: int | None = None, lifetime: LifetimeQuery = 120
) -> StreamingResponse:
    """Fleet events after id `after` (default: from now on), oldest first, as `fleet` events with their ids."""
    start = _resume_from(request, after)
    if start is None:
        start = await _read(engine, overview.latest_event_id)

    async def body() -> AsyncIterator[str]:
        newest = start
        deadline = time.monotonic() + lifetime
        yield "retry: 1000\n\n"
        for tick in itertools.count():
            await _sample(engine, lag, tick)
            found = await _read(engine, partial(overview.events_after, after_id=newest))
            for event in found:
                yield _sse("fleet", event.model_dump(mode="json"), event.id)
                newest = event.id
            if time.monotonic() > deadline or await request.is_disconnected():
                return
            if not found:
                if tick % KEEPALIVE_EVERY == KEEPALIVE_EVERY - 1:
                    yield ": keepalive\n\n"  # a quiet fleet: proxies and the browser see the stream is alive
                await asyncio.sleep(POLL_S)

    return _stream(body())


router.include_router(pages)
