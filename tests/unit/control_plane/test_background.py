"""A control plane serves from its first moment: its background work (reconciler, health, lag, observer) comes up
beside the API, and stopping while it is still coming up leaves nothing running (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane import background
from control_plane.app import create_app
from control_plane.db.models import Node
from control_plane.reconciler import worker
from control_plane.settings import Settings, api_token
from tests.unit.control_plane.fakes import fake_fleet


class SlowObserver:
    """Stands in for the observer: its making blocks (the `weed shell` sessions of a real one) until released."""

    def __init__(self) -> None:
        self.asked, self.released = threading.Event(), threading.Event()
        self.started = self.closed = False

    def build(self, *_: Any) -> SlowObserver:
        self.asked.set()
        assert self.released.wait(20)
        return self

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True

    def followed(self) -> list[Any]:
        return []


def _settings(engine: Engine, tmp_path: Path) -> Settings:
    url = engine.url.render_as_string(hide_password=False)
    return Settings(state_dir=tmp_path, database_url=url, observer=True)  # type: ignore[call-arg]


def _one_node_app(engine: Engine, settings: Settings) -> tuple[FastAPI, dict[str, str]]:
    """A control plane over the fakes with one node, and the headers that authenticate to it."""
    with Session(engine) as session:
        session.add(Node(name="n1", engine_url="fake-n1", capacity_agents=4))
        session.commit()
    fleet, _ = fake_fleet(engine, settings)
    app = create_app(settings, fleet, engine=engine)
    return app, {"authorization": f"Bearer {api_token(settings, create=False)}"}


def _wait_for(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_api_and_the_reconciler_work_while_the_observer_is_still_being_made(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowObserver()
    monkeypatch.setattr(background, "build_observer", slow.build)
    settings = _settings(engine, tmp_path)
    app, headers = _one_node_app(engine, settings)
    with TestClient(app, headers=headers) as api:
        assert slow.asked.wait(20)
        assert api.get("/healthz").status_code == 200
        assert app.state.observer is None
        created = api.post("/v1/tenants", json={"name": "acme", "agents": 1})
        assert created.status_code == 202, created.text
        operation = created.json()["id"]

        def finished() -> bool:
            return bool(api.get(f"/v1/operations/{operation}").json()["state"] == "succeeded")

        _wait_for(finished)  # the reconciler runs operations before the observer is up
        slow.released.set()
        _wait_for(lambda: app.state.observer is slow)
        _wait_for(lambda: slow.started)
    assert slow.closed and app.state.observer is None


def test_stopping_while_the_background_work_comes_up_starts_nothing_after(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowObserver()
    monkeypatch.setattr(background, "build_observer", slow.build)
    settings = _settings(engine, tmp_path)
    fleet, _ = fake_fleet(engine, settings)
    app = create_app(settings, fleet, engine=engine)
    before = {thread.name for thread in threading.enumerate()}
    client = TestClient(app)
    client.__enter__()
    assert slow.asked.wait(20)
    stopping = threading.Thread(target=client.__exit__, args=(None, None, None))
    stopping.start()
    time.sleep(0.5)  # the lifespan's end is waiting for the observer's making
    assert stopping.is_alive()
    slow.released.set()
    stopping.join(20)
    assert not stopping.is_alive()
    assert not slow.started and slow.closed  # made after the stop began: closed, never started
    assert app.state.observer is None
    _wait_for(lambda: {thread.name for thread in threading.enumerate()} - before == set())


def test_a_queued_operation_starts_at_once_and_its_wait_answers_as_soon_as_it_finished(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API wakes this control plane's reconciler when it queues an operation, and the reconciler wakes the
    `?wait=` requests when it finished one: neither waits for its tick. Both ticks are 30 s here (the idle
    worker's look at the queue, the waits' poll): a provision answered in a few seconds was woken twice."""
    monkeypatch.setattr(worker, "IDLE_LOOK", 30.0)
    settings = _settings(engine, tmp_path)
    settings.observer = False
    settings.wait_poll_interval = 30.0
    app, headers = _one_node_app(engine, settings)
    with TestClient(app, headers=headers) as api:
        _wait_for(lambda: getattr(app.state.operation_queued, "__name__", "") == "wake")  # the reconciler runs
        time.sleep(0.5)  # its workers' first look is done: the next is 30 s away
        started = time.monotonic()
        created = api.post("/v1/tenants?wait=true&timeout=60", json={"name": "acme", "agents": 1})
        took = time.monotonic() - started
    assert created.status_code == 200 and created.json()["state"] == "succeeded", created.text
    assert took < 10, f"answered after {took:.1f}s: a tick, not a wakeup"
