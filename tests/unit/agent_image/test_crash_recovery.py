"""kill -9 a runtime process at many points, restart it, and check what survived.

Must hold after every crash: every workflow finishes with the result of a crash-free run; every step whose
checkpoint committed ran exactly once; only a step in flight at the kill ran again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import apsw
import httpx
import pytest

from tests.unit.agent_image import crash_bundle
from tests.unit.agent_image.agent_process import free_port, log_rows, serve, wait_ready
from tests.unit.agent_image.crash_runner import BONUS

RUNNER = Path(__file__).with_name("crash_runner.py")
REPO = Path(__file__).resolve().parents[3]
WORKFLOWS = ("w0", "w1", "w2")
ALL_STEPS = range(crash_bundle.STEPS + 1)


def _env(effects: Path, **extra: str) -> dict[str, str]:
    return os.environ | {"CRASH_EFFECTS": str(effects), "PYTHONPATH": str(REPO)} | extra


def _command(db: Path, nap: float) -> list[str]:
    return [sys.executable, str(RUNNER), str(db), str(len(WORKFLOWS)), str(nap)]


def _finish(db: Path, effects: Path, nap: float) -> dict[str, int]:
    done = subprocess.run(_command(db, nap), env=_env(effects), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _effects(effects: Path) -> Counter[str]:
    return Counter(effects.read_text().split()) if effects.exists() else Counter()


def _read_only(db: Path) -> apsw.Connection:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)  # a restarting runtime holds the file briefly while SQLite recovers the WAL
    return conn


def _log_entries(db: Path, kind: str) -> list[tuple[str, int, str]]:
    conn = _read_only(db)
    try:
        return conn.execute(
            "SELECT workflow_id, seq, value FROM execution_log WHERE kind=? ORDER BY lsn", (kind,)
        ).fetchall()
    except apsw.SQLError:
        return []  # schema not created yet
    finally:
        conn.close()


def _assert_completed_exactly_once(db: Path, results: dict[str, int]) -> None:
    assert results == {wid: crash_bundle.expected(BONUS) for wid in WORKFLOWS}
    checkpoints = Counter((wid, seq) for wid, seq, _ in _log_entries(db, "step"))
    assert set(checkpoints.values()) == {1}, "a step was checkpointed twice"
    assert len(checkpoints) == len(WORKFLOWS) * len(ALL_STEPS)


def _assert_only_in_flight_reran(counts: Counter[str], kills: int, exact: dict[str, int]) -> None:
    for wid in WORKFLOWS:
        per_step = {i: counts[f"{wid}:{i}"] for i in ALL_STEPS}
        assert all(1 <= n <= 1 + kills for n in per_step.values()), (wid, per_step)
        assert sum(n - 1 for n in per_step.values()) <= kills, (wid, per_step)
    for key, n in exact.items():
        assert counts[key] == n, (key, counts[key], n)


POINTS = [
    f"{where}:w1:{i}"
    for i in ALL_STEPS
    for where in ("before", "inside", "boundary")
    if not (where == "boundary" and i == crash_bundle.STEPS)
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_a_named_point(tmp_path: Path, point: str) -> None:
    db, effects = tmp_path / "agent.db", tmp_path / "effects"
    crashed = subprocess.run(
        _command(db, 0.05), env=_env(effects, CRASH_AT=point), capture_output=True, text=True, timeout=120
    )
    assert crashed.returncode == -signal.SIGKILL, f"never reached {point}: {crashed.stderr[-2000:]}"

    results = _finish(db, effects, 0.05)

    _assert_completed_exactly_once(db, results)
    where, wid, index = point.split(":")
    # w1 died exactly at `point`: only the step in flight ("inside": its effect happened, its checkpoint did not)
    # runs twice. w0 and w2 were wherever they were, so each may have re-run one step.
    exact = {f"{wid}:{i}": 1 for i in ALL_STEPS} | {f"{wid}:{index}": 2 if where == "inside" else 1}
    _assert_only_in_flight_reran(_effects(effects), kills=1, exact=exact)


def _kill_when(db: Path, effects: Path, nap: float, kind: str, **env: str) -> int:
    """Start the runner, kill -9 it as soon as w1's log holds an entry of `kind`; return that entry's value."""
    proc = subprocess.Popen(_command(db, nap), env=_env(effects, **env), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entries = [value for wid, _, value in _log_entries(db, kind) if wid == "w1"] if db.exists() else []
            if entries:
                proc.kill()
                return json.loads(entries[0])  # type: ignore[no-any-return]
            time.sleep(0.005)
        raise AssertionError(f"w1 never logged {kind}")
    finally:
        proc.kill()
        proc.wait()


def test_kill_during_sleep_wakes_at_the_original_deadline(tmp_path: Path) -> None:
    db, effects = tmp_path / "agent.db", tmp_path / "effects"
    deadline = _kill_when(db, effects, 4.0, "sleep")

    results = _finish(db, effects, 4.0)

    _assert_completed_exactly_once(db, results)
    woke = [entry for entry in _log_entries(db, "recv.wait") if entry[0] == "w1"]
    conn = _read_only(db)
    woke_at = conn.execute("SELECT at FROM execution_log WHERE workflow_id='w1' AND kind='recv.wait'").fetchall()[0][0]
    conn.close()
    assert woke, "w1 never got past its sleep"
    # A sleep restarted from scratch would wake about 4 s after the kill, i.e. near deadline + 4.
    assert deadline <= woke_at < deadline + 2.5, f"woke {woke_at - deadline:.2f} s after the logged deadline"
    _assert_only_in_flight_reran(_effects(effects), kills=1, exact={f"w1:{i}": 1 for i in ALL_STEPS})


def test_kill_during_recv_keeps_waiting_and_receives_once(tmp_path: Path) -> None:
    db, effects = tmp_path / "agent.db", tmp_path / "effects"
    _kill_when(db, effects, 0.05, "recv.wait", CRASH_RECV_DELAY="1.0")

    results = _finish(db, effects, 0.05)

    _assert_completed_exactly_once(db, results)
    received = [entry for entry in _log_entries(db, "recv") if entry[0] == "w1"]
    assert len(received) == 1 and json.loads(received[0][2]) == {"bonus": BONUS}
    _assert_only_in_flight_reran(_effects(effects), kills=1, exact={f"w1:{i}": 1 for i in ALL_STEPS})


@pytest.mark.parametrize("seed", range(8))
def test_kill_at_random_moments(tmp_path: Path, seed: int) -> None:
    db, effects = tmp_path / "agent.db", tmp_path / "effects"
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            _command(db, 0.1), env=_env(effects, CRASH_STEP_SECONDS="0.01"), stdout=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.05, 0.5))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()

    results = _finish(db, effects, 0.1)

    _assert_completed_exactly_once(db, results)
    _assert_only_in_flight_reran(_effects(effects), kills=kills, exact={})


@pytest.mark.parametrize(
    ("branch", "named"),
    [("B", "step 'alpha'"), ("raises", "step 'alpha'"), ("other-step", "step 'alpha'"), ("swallows", "sleep None")],
)
def test_replay_that_leaves_logged_operations_unconsumed_is_blocked(tmp_path: Path, branch: str, named: str) -> None:
    """Kill point: w's log holds `alpha` and a sleep (kill -9 while it sleeps). The restarted code takes another
    branch: it returns early ("B"), fails early ("raises"), calls another step at the same position
    ("other-step"), or does so and catches what the replay raised ("swallows"). Each is non-determinism: the
    workflow must end BLOCKED naming what the log holds, never SUCCESS or ERROR."""
    db, port = tmp_path / "agent.db", free_port()
    agent = serve(db, port, "tests.unit.agent_image.branch_bundle", BRANCH="A")
    try:
        wait_ready(port, agent)
        assert httpx.post(f"http://127.0.0.1:{port}/v1/workflows/branching", json={"id": "w"}).status_code == 201
        deadline = time.monotonic() + 20
        while not log_rows(db, "SELECT 1 FROM execution_log WHERE workflow_id='w' AND kind='sleep'"):
            assert time.monotonic() < deadline, "w never reached its sleep"
            time.sleep(0.01)
        agent.kill()
        agent.wait(10)
    finally:
        agent.kill()

    restarted = serve(db, port, "tests.unit.agent_image.branch_bundle", BRANCH=branch)
    try:
        wait_ready(port, restarted)
        status = httpx.get(f"http://127.0.0.1:{port}/v1/workflows/w", params={"wait": 10}, timeout=15).json()
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(20)
    assert status["status"] == "BLOCKED", status
    assert named in status["blocked_reason"], status
    assert status["result"] is None and status["error"] is None
