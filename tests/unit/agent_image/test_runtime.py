"""The runtime's features, each against a real SQLite file (no mocks)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest

from agent_image import (
    Bundle,
    DatabaseInUse,
    Draining,
    InvalidRequest,
    NotJSONError,
    Runtime,
    UnknownWorkflow,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from agent_image._specs import WorkflowSpec
from agent_image._sysdb import SCHEMA_VERSION
from tests.unit.agent_image import features_bundle as fb

OpenRuntime = Callable[..., Runtime]


def test_steps_are_checkpointed_in_order(runtime: Runtime) -> None:
    handle = runtime.start(fb.pipeline, (3,))
    assert handle.result(5) == 24
    steps = runtime.steps(handle.id)
    assert [(s.seq, s.kind, s.name, s.output) for s in steps] == [
        (1, "step", "double", 6),
        (2, "step", "double", 12),
        (3, "step", "double", 24),
    ]
    assert all(s.attempts == 1 and s.error is None for s in steps)


def test_same_id_twice_is_the_same_workflow(runtime: Runtime) -> None:
    first = runtime.start("pipeline", (1,), id="order-1")
    first.result(5)
    again = runtime.start("pipeline", (1,), id="order-1")
    assert again.id == first.id
    assert fb.calls["double"] == 3, "the second start must not run anything"
    with pytest.raises(WorkflowIdConflict):
        runtime.start("napper", (0,), id="order-1")


def test_retries_with_backoff_then_success(runtime: Runtime) -> None:
    handle = runtime.start(fb.retrying, (2,))
    assert handle.result(5) == "ok"
    (step,) = runtime.steps(handle.id)
    assert step.attempts == 3 and step.output == "ok"


def test_retries_exhausted_records_the_error(runtime: Runtime) -> None:
    handle = runtime.start(fb.retrying, (10,))
    with pytest.raises(WorkflowFailed) as failed:
        handle.result(5)
    assert failed.value.error == {
        "type": "StepError",
        "message": "step 'flaky' failed: ConnectionError: attempt 4 failed",
    }
    (step,) = runtime.steps(handle.id)
    assert step.attempts == 4 and step.error == {"type": "ConnectionError", "message": "attempt 4 failed"}


def test_a_step_error_can_be_caught_by_the_workflow(runtime: Runtime) -> None:
    assert runtime.start(fb.catches_step_error).result(5) == "caught ValueError: no good"
    failed = runtime.wait(runtime.start(fb.fails).id, 5)
    assert failed.status == "ERROR"
    assert failed.error == {"type": "StepError", "message": "step 'boom' failed: ValueError: no good"}


def test_non_json_values_fail_at_the_call_site(runtime: Runtime) -> None:
    with pytest.raises(NotJSONError, match="arguments of 'pipeline'"):
        runtime.start(fb.pipeline, (object(),))
    handle = runtime.start(fb.bad_value)
    status = runtime.wait(handle.id, 5)
    assert status.status == "ERROR"
    assert (
        status.error is not None and "step 'returns_a_set' returned a value that is not JSON" in status.error["message"]
    )
    with pytest.raises(NotJSONError):
        runtime.send(handle.id, {1, 2})


def test_unknown_workflow_and_unknown_id(runtime: Runtime) -> None:
    with pytest.raises(UnknownWorkflow, match="no workflow 'nope'"):
        runtime.start("nope")
    with pytest.raises(WorkflowNotFound):
        runtime.get("missing")
    with pytest.raises(WorkflowNotFound):
        runtime.send("missing", "hi")


def test_send_and_recv_exactly_once(runtime: Runtime) -> None:
    listener = runtime.start(fb.listener, (5,))
    runtime.send(listener.id, {"n": 1}, "inbox")
    runtime.send(listener.id, {"n": 2}, "inbox")
    assert listener.result(5) == {"n": 1}
    talker_target = runtime.start(fb.listener, (5,))
    assert runtime.start(fb.talker, (talker_target.id,)).result(5) == "sent"
    assert talker_target.result(5)["from"]


def test_recv_times_out_with_none(runtime: Runtime) -> None:
    started = time.monotonic()
    assert runtime.start(fb.listener, (0.2,)).result(5) is None
    assert 0.2 <= time.monotonic() - started < 2


def test_events(runtime: Runtime) -> None:
    sub_target = "pub-1"
    subscriber = runtime.start(fb.subscriber, (sub_target,))
    runtime.start(fb.publisher, ("green",), id=sub_target).result(5)
    assert subscriber.result(5) == "green"
    assert runtime.get_event(sub_target, "status") == "green"
    assert runtime.get_event(sub_target, "missing") is None


def test_child_workflows(runtime: Runtime) -> None:
    handle = runtime.start(fb.parent, (3,))
    assert handle.result(10) == [0, 8, 16, 80]
    children = [w for w in runtime.list_workflows(name="pipeline") if w.parent_id == handle.id]
    assert len(children) == 4
    kinds = [s.kind for s in runtime.steps(handle.id)]
    assert kinds == ["child"] * 3 + ["child.result"] * 3 + ["child", "child.result"]


def test_cancel_cascades_to_children(runtime: Runtime) -> None:
    handle = runtime.start(fb.parent_of_sleeper)
    deadline = time.monotonic() + 5
    while not [w for w in runtime.list_workflows(name="waits_forever") if w.parent_id == handle.id]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert runtime.cancel(handle.id).status == "CANCELLED"
    (child,) = [w for w in runtime.list_workflows(name="waits_forever") if w.parent_id == handle.id]
    assert runtime.wait(child.id, 5).status == "CANCELLED"
    assert runtime.cancel(handle.id).status == "CANCELLED", "cancelling twice is harmless"


def test_queue_concurrency_limit(runtime: Runtime) -> None:
    handles = [runtime.start(fb.queued) for _ in range(5)]
    time.sleep(0.3)
    statuses = sorted(h.status().status for h in handles)
    assert statuses == ["PENDING"] * 3 + ["RUNNING"] * 2
    fb.gate.set()
    assert [h.result(5) for h in handles] == ["through"] * 5
    assert fb.peak[0] == 2


def test_fork_keeps_steps_before_n_and_reruns_the_rest(runtime: Runtime) -> None:
    original = runtime.start(fb.pipeline, (1,))
    original.result(5)
    fork = runtime.fork(original.id, 3)
    assert fork.result(5) == 8
    assert fb.calls["double"] == 4, "only operation 3 ran again"
    assert fork.status().forked_from == original.id


def test_durable_sleep_survives_restart(open_runtime: OpenRuntime) -> None:
    first = open_runtime()
    handle = first.start(fb.napper, (0.6,))
    time.sleep(0.1)
    first.close()
    started = time.monotonic()
    second = open_runtime()
    assert second.wait(handle.id, 5).result == "rested"
    assert time.monotonic() - started < 0.6, "woke at the original deadline, not a fresh 0.6 s later"


def _park_a_listener(open_runtime: OpenRuntime) -> str:
    """Start a workflow waiting in recv, then close the runtime: it must park with nothing stuck."""
    first = open_runtime()
    handle = first.start(fb.listener, (30,))
    time.sleep(0.1)
    assert first.close(timeout=5) == 0
    return handle.id


def test_close_parks_at_a_step_boundary_and_recovery_finishes(open_runtime: OpenRuntime) -> None:
    handle_id = _park_a_listener(open_runtime)
    second = open_runtime()
    assert second.get(handle_id).status == "RUNNING"
    second.send(handle_id, "late", "inbox")
    assert second.wait(handle_id, 5).result == "late"


def test_another_version_blocks_unless_compatible(open_runtime: OpenRuntime) -> None:
    handle_id = _park_a_listener(open_runtime)
    base = Bundle.from_module(fb)
    incompatible = dataclasses.replace(base, version="3", compatible_versions=frozenset())
    blocked = open_runtime(incompatible)
    status = blocked.get(handle_id)
    assert status.status == "BLOCKED"
    assert "started under bundle version 2; this agent runs version 3" in (status.blocked_reason or "")
    blocked.close()
    resumed = open_runtime(dataclasses.replace(base, version="3", compatible_versions=frozenset({"2"})))
    assert resumed.get(handle_id).status == "RUNNING"
    resumed.send(handle_id, "ok", "inbox")
    assert resumed.wait(handle_id, 5).result == "ok"


def test_non_determinism_is_detected_and_blocks(open_runtime: OpenRuntime) -> None:
    handle_id = _park_a_listener(open_runtime)

    def listener(timeout: float) -> object:
        return fb.double(1)  # the code now calls a step where the log holds a recv

    base = Bundle.from_module(fb)
    changed = dataclasses.replace(base, workflows=base.workflows | {"listener": WorkflowSpec("listener", listener)})
    status = open_runtime(changed).wait(handle_id, 5)
    assert status.status == "BLOCKED"
    assert "operation 1: the log holds recv.wait 'inbox', the code now calls step 'double'" in (
        status.blocked_reason or ""
    )
    assert "double" not in fb.calls, "nothing ran past the divergence"


def test_drain_refuses_new_work_and_reports_in_flight(runtime: Runtime) -> None:
    waiting = runtime.start(fb.listener, (30,))
    assert runtime.drain() == 1
    with pytest.raises(Draining):
        runtime.start(fb.pipeline, (1,))
    runtime.send(waiting.id, "done", "inbox")
    assert waiting.result(5) == "done"
    assert runtime.in_flight() == 0


def test_one_runtime_per_file_but_readers_are_fine(runtime: Runtime, tmp_path: Path) -> None:
    runtime.start(fb.pipeline, (1,)).result(5)
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from agent_image import Runtime; import tests.unit.agent_image.features_bundle as b; "
            f"Runtime({str(tmp_path / 'agent.db')!r}, b)",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert other.returncode != 0
    assert "DatabaseInUse" in other.stderr and "one agent runtime per database file" in other.stderr
    with pytest.raises(DatabaseInUse):
        Runtime(str(tmp_path / "agent.db"), fb)
    # A reader (Litestream, say) opening the file beside the runtime is fine, checkpoint included.
    reader = apsw.Connection(str(tmp_path / "agent.db"))
    assert reader.execute("SELECT count(*) FROM workflow_state").fetchall()[0][0] == 1
    reader.execute("PRAGMA wal_checkpoint(PASSIVE)")
    reader.close()
    assert runtime.start(fb.pipeline, (2,)).result(5) == 16


def test_storage_settings(runtime: Runtime, open_runtime: OpenRuntime, tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "agent.db"))
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION
    conn.close()
    assert runtime.store.synchronous == "FULL"
    with pytest.raises(ValueError, match="synchronous must be one of"):
        Runtime(str(tmp_path / "other.db"), fb, synchronous="SOMETIMES")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "agent.db"))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(Exception, match="newer litefleet agent image"):
        Runtime(str(tmp_path / "agent.db"), fb)


def test_group_commit_keeps_every_concurrent_write(runtime: Runtime) -> None:
    def bump() -> None:
        for _ in range(200):
            runtime.store.bump_counter("c")

    threads = [threading.Thread(target=bump) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runtime.store.counter("c") == 3200


@pytest.mark.parametrize("bad", ["", "a/b", "a" * 201, "bad id!", "x\n"])
def test_ids_follow_one_rule_for_start_and_fork(runtime: Runtime, bad: str) -> None:
    with pytest.raises(InvalidRequest, match="id must be"):
        runtime.start(fb.pipeline, (1,), id=bad)
    original = runtime.start(fb.pipeline, (1,))
    original.result(5)
    with pytest.raises(InvalidRequest, match="id must be"):
        runtime.fork(original.id, 1, new_id=bad)
    with pytest.raises(InvalidRequest, match="from_step"):
        runtime.fork(original.id, 0)
    assert [w.id for w in runtime.list_workflows()] == [original.id]


def test_a_workflow_that_swallows_its_parking_still_parks(open_runtime: OpenRuntime) -> None:
    """Shutdown parks a workflow by raising at its step boundary; code that catches that and returns must not be
    settled as SUCCESS with a result the workflow only reached because the agent was stopping."""
    first = open_runtime()
    handle = first.start(fb.stubborn_napper, (0.6,))
    time.sleep(0.1)
    first.close(timeout=5)
    second = open_runtime()
    assert second.wait(handle.id, 5).result == "rested"


def test_a_waiter_gets_the_row_settle_committed_without_reading_it_back(runtime: Runtime) -> None:
    """SUCCESS and ERROR are final: settle's UPDATE ... RETURNING hands the committed row to whoever waits, and it
    is exactly what a read gives."""
    handle = runtime.start(fb.queued)
    reads: list[str] = []
    real_get = runtime.get
    runtime.get = lambda workflow_id: (reads.append(workflow_id), real_get(workflow_id))[1]  # type: ignore[method-assign]
    answer: list[object] = []
    waiter = threading.Thread(target=lambda: answer.append(runtime.wait(handle.id, 10)))
    waiter.start()
    time.sleep(0.1)  # the waiter is waiting on the running workflow
    fb.gate.set()
    waiter.join(10)
    assert reads == []
    assert answer == [real_get(handle.id)]
    assert real_get(handle.id).result == "through"
    failed = runtime.start(fb.fails)
    assert runtime.wait(failed.id, 5) == real_get(failed.id)


def test_generated_ids_are_uuid4_hex(runtime: Runtime) -> None:
    ids = {runtime.start(fb.pipeline, (1,)).id for _ in range(20)}
    assert len(ids) == 20
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).hex == i for i in ids)
