"""The last step's checkpoint rides with the workflow's finish when the workflow returns the step's value at once
(`_replay.record(with_finish=True)`): one commit fewer, and kill -9 in between loses nothing but a re-run of
that step (see test_crash_recovery for every other step boundary: there a checkpoint is durable when the step
returns)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import apsw

from agent_image import Runtime
from tests.unit.agent_image import features_bundle as fb

RUNNER = Path(__file__).with_name("finish_runner.py")
REPO = Path(__file__).resolve().parents[3]


def _runner(db: Path, effects: Path, hold: float) -> list[str]:
    return [sys.executable, str(RUNNER), str(db), str(effects), str(hold)]


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO)}


def _effects(effects: Path) -> Counter[str]:
    return Counter(effects.read_text().split()) if effects.exists() else Counter()


def test_an_uninterrupted_run_commits_start_first_step_and_last_step_with_the_finish(tmp_path: Path) -> None:
    db, effects = tmp_path / "agent.db", tmp_path / "effects"
    done = subprocess.run(_runner(db, effects, 0), env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"result": 50, "commits": 3}
    conn = apsw.Connection(str(db))
    assert conn.execute(
        "SELECT seq, kind, name, value FROM execution_log WHERE seq IS NOT NULL ORDER BY lsn"
    ).fetchall() == [
        (1, "step", "first", "5"),
        (2, "step", "last", "50"),
    ]
    assert conn.execute("SELECT status, output FROM workflow_state WHERE id='w'").fetchall() == [("SUCCESS", "50")]


def test_kill_after_the_last_step_returned_and_before_its_merged_finish_committed(tmp_path: Path) -> None:
    """The kill lands exactly in the window the merge opens: the last step has run and returned, and its
    checkpoint waits with the finish for the file's write lock, which the test holds. After a restart: the last
    step runs again (its checkpoint was never durable, as if the kill had come while it ran), the first does not,
    each step is checkpointed once and the result is the crash-free one. Unmerged, a kill while the step's own
    commit waited for the lock would leave exactly this file: the merge is invisible to recovery."""
    db, effects = tmp_path / "agent.db", tmp_path / "effects"
    runner = subprocess.Popen(_runner(db, effects, 1.0), env=_env(), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while _effects(effects)["last"] == 0:
            assert time.monotonic() < deadline, "the last step never ran"
            assert runner.poll() is None
            time.sleep(0.005)
        lock = apsw.Connection(str(db))
        lock.set_busy_timeout(10_000)
        lock.execute("BEGIN IMMEDIATE")  # taken while the step still holds its result (its 1 s hold)
        time.sleep(1.5)  # the step has returned; its checkpoint and the finish now wait for this lock
        assert runner.poll() is None
        logged = lock.execute("SELECT seq, name FROM execution_log WHERE seq IS NOT NULL ORDER BY lsn").fetchall()
        assert logged == [(1, "first")]
        assert lock.execute("SELECT status FROM workflow_state WHERE id='w'").fetchall() == [("RUNNING",)]
        runner.kill()
        runner.wait(10)
        lock.execute("ROLLBACK")
        lock.close()
    finally:
        runner.kill()
        runner.wait()

    done = subprocess.run(_runner(db, effects, 0), env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["result"] == 50
    assert _effects(effects) == Counter({"first": 1, "last": 2})
    conn = apsw.Connection(str(db))
    steps = conn.execute("SELECT seq, name FROM execution_log WHERE seq IS NOT NULL ORDER BY lsn").fetchall()
    assert steps == [(1, "first"), (2, "last")]
    assert conn.execute("SELECT status FROM workflow_state WHERE id='w'").fetchall() == [("SUCCESS",)]


def test_only_a_step_whose_value_the_workflow_returns_at_once_is_merged(open_runtime: Callable[..., Runtime]) -> None:
    runtime = open_runtime()
    cases = [(fb.pipeline, (1,), 4), (fb.doubled_plus_one, (1,), 3), (fb.retrying, (0,), 2)]
    for workflow, args, commits in cases:
        before = runtime.store.commits
        handle = runtime.start(workflow, args)
        handle.result(5)
        assert runtime.store.commits - before == commits, workflow
        assert all(step.kind == "step" for step in runtime.steps(handle.id))
