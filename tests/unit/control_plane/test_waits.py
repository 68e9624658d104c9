"""`?wait=` against a real uvicorn control plane on the real SQLite (or PostgreSQL) fleet DB: waits hold no
connection and no worker thread, are capped (429 too_many_waits with Retry-After past the cap, before anything is
queued), and never slow `/healthz` down."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import Node, Operation, OperationKind, OperationState
from control_plane.settings import Settings, api_token

SERVE = """
import sys, uvicorn
from control_plane.app import create_app
from control_plane.settings import Settings
app = create_app(Settings(), background=False)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@contextmanager
def control_plane(engine: Engine, tmp_path: Path, **settings: Any) -> Iterator[tuple[str, dict[str, str]]]:
    """A control plane served by uvicorn in a process of its own, on a free loopback port (no reconciler:
    operations stay as the test leaves them); yields its URL and the admin header."""
    url = engine.url.render_as_string(hide_password=False)
    config = Settings(state_dir=tmp_path, database_url=url, **settings)
    env = {
        **os.environ,
        "LITEFLEET_STATE_DIR": str(tmp_path),
        "LITEFLEET_DATABASE_URL": url,
        **{f"LITEFLEET_{key.upper()}": str(value) for key, value in settings.items()},
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None and time.monotonic() < deadline, "the control plane did not start"
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        yield base, {"authorization": f"Bearer {api_token(config, create=False)}"}
    finally:
        server.terminate()
        server.wait(10)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _queue(engine: Engine, count: int) -> list[str]:
    with Session(engine) as session:
        ops = [Operation(kind=OperationKind.scale, tenant=f"t{i}", params={}) for i in range(count)]
        session.add_all(ops)
        session.commit()
        return [op.id for op in ops]


def _finish(engine: Engine, ids: list[str]) -> None:
    with Session(engine) as session:
        for op in session.exec(select(Operation).where(Operation.id.in_(ids))).all():  # type: ignore[attr-defined]
            op.state = OperationState.succeeded
            session.add(op)
        session.commit()


PROBE = """
import json, sys, time, httpx
latencies, end = [], time.time() + float(sys.argv[2])
with httpx.Client(timeout=30) as client:
    client.get(sys.argv[1] + "/healthz")
    print("ready", flush=True)
    while time.time() < end:
        started = time.time()
        assert client.get(sys.argv[1] + "/healthz").status_code == 200
        latencies.append((started, time.time() - started))
        time.sleep(0.02)
print(json.dumps(latencies))
"""


def _probe_healthz(base: str, seconds: float) -> subprocess.Popen[str]:
    """/healthz probed every 20 ms for `seconds` from a process of its own (the test's own event loop is busy
    sending the waits), once it has started."""
    prober = subprocess.Popen([sys.executable, "-c", PROBE, base, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
    return prober


_OUTPUT: dict[int, list[tuple[float, float]]] = {}


def _probes(prober: subprocess.Popen[str]) -> list[tuple[float, float]]:
    if prober.pid not in _OUTPUT:
        out, _ = prober.communicate(timeout=120)
        assert prober.returncode == 0
        _OUTPUT[prober.pid] = [(at, latency) for at, latency in json.loads(out)]
    return _OUTPUT[prober.pid]


def _latencies(prober: subprocess.Popen[str]) -> list[float]:
    return [latency for _, latency in _probes(prober)]


def _latencies_between(prober: subprocess.Popen[str], since: float, until: float) -> list[float]:
    """The latencies of the probes sent between `since` and `until` (wall clock)."""
    return [latency for at, latency in _probes(prober) if since <= at <= until]


def test_200_concurrent_waits_keep_healthz_fast_and_answer_no_5xx(engine: Engine, tmp_path: Path) -> None:
    ids = _queue(engine, 200)
    with control_plane(engine, tmp_path, max_waits=100) as (base, auth):
        idle = _latencies(_probe_healthz(base, 3))  # the baseline: the same probes with nothing waiting
        held: list[float] = []  # while 100 requests wait (all of them admitted or refused, none finished)

        async def run() -> tuple[list[int], list[float]]:
            waited: list[float] = []
            refused: list[float] = []
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(base_url=base, headers=auth, timeout=60, limits=limits) as api:

                async def wait(op_id: str) -> int:
                    started = time.monotonic()
                    answer = await api.get(f"/v1/operations/{op_id}", params={"wait": "true", "timeout": 8})
                    if answer.status_code == 200:
                        waited.append(time.monotonic() - started)
                        assert answer.json()["id"] == op_id
                    else:
                        assert answer.status_code == 429, answer.text
                        assert answer.json()["code"] == "too_many_waits"
                        assert answer.headers["retry-after"] == "1"
                        refused.append(time.time())
                    return answer.status_code

                waits = [asyncio.create_task(wait(op_id)) for op_id in ids]
                while len(refused) < 100 and not any(w.done() and w.result() == 200 for w in waits):
                    await asyncio.sleep(0.05)
                held.append(time.time())
                await asyncio.sleep(3)
                held.append(time.time())
                await asyncio.to_thread(_finish, engine, ids[::2])  # half finish; the others time out
                statuses = await asyncio.gather(*waits)
            return statuses, waited

        prober = _probe_healthz(base, 25)
        statuses, waited = asyncio.run(run())
        burst, holding = _latencies(prober), _latencies_between(prober, held[0], held[1])
    p99, idle_p99 = _percentile(holding, 0.99), _percentile(idle, 0.99)
    served, refused = statuses.count(200), statuses.count(429)
    print(
        f"200 concurrent waits: {served} waited, {refused} answered 429; /healthz while they wait: "
        f"{len(holding)} probes, p50 {statistics.median(holding) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
        f"over the whole run (arrival burst included) p99 {_percentile(burst, 0.99) * 1000:.1f} ms, "
        f"max {max(burst) * 1000:.1f} ms; nothing waiting (same run): p50 {statistics.median(idle) * 1000:.1f} ms, "
        f"p99 {idle_p99 * 1000:.1f} ms"
    )
    assert all(status in (200, 429) for status in statuses)  # no 5xx, nothing else
    assert served >= 100 and served + refused == 200
    # under 100 ms; on a machine so loaded that /healthz alone takes more, no worse than twice its own baseline
    assert len(holding) >= 20 and p99 < max(0.1, 2 * idle_p99)
    assert min(waited) > 1.0  # they did wait (for the DB to say finished, or for their timeout)


def test_past_the_cap_an_action_is_refused_before_it_is_queued(engine: Engine, tmp_path: Path) -> None:
    (held,) = _queue(engine, 1)
    with control_plane(engine, tmp_path, max_waits=1) as (base, auth):
        holder = threading.Thread(
            target=lambda: httpx.get(
                f"{base}/v1/operations/{held}", params={"wait": "true", "timeout": 3}, headers=auth, timeout=10
            )
        )
        holder.start()
        time.sleep(0.5)
        body = {"name": "acme", "agents": 1, "bundle": "tenants.hello"}
        refused = httpx.post(f"{base}/v1/tenants", params={"wait": "true"}, json=body, headers=auth, timeout=10)
        assert refused.status_code == 429 and refused.json()["code"] == "too_many_waits"
        assert refused.headers["retry-after"] == "1"
        with Session(engine) as session:
            assert len(session.exec(select(Operation)).all()) == 1  # nothing was queued
        holder.join()
        # the slot is given back with the response: the next wait is served
        answer = httpx.get(f"{base}/v1/operations/{held}", params={"wait": "true", "timeout": 0.5}, headers=auth)
        assert answer.status_code == 200 and answer.json()["state"] == "pending"


def test_an_action_that_waits_answers_once_its_operation_finished(engine: Engine, tmp_path: Path) -> None:
    """POST ...?wait=true: the operation is queued at once, and the answer comes when it finished (200)."""
    with Session(engine) as session:
        session.add(Node(name="n1", engine_url="unix:///x"))  # capacity for the tenant (nothing runs it here)
        session.commit()
    with control_plane(engine, tmp_path) as (base, auth):

        def finish_when_queued() -> None:
            for _ in range(200):
                with Session(engine) as session:
                    ops = session.exec(select(Operation)).all()
                if ops:
                    time.sleep(0.5)
                    _finish(engine, [op.id for op in ops])
                    return
                time.sleep(0.05)

        finisher = threading.Thread(target=finish_when_queued)
        finisher.start()
        started = time.monotonic()
        body = {"name": "acme", "agents": 1, "bundle": "tenants.hello"}
        answer = httpx.post(f"{base}/v1/tenants", params={"wait": "true"}, json=body, headers=auth, timeout=30)
        finisher.join()
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "succeeded" and time.monotonic() - started >= 0.5
