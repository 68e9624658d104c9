"""What tenant code calls: the decorators and the durable operations a workflow performs.

Each operation takes the next sequence number of the running workflow, returns the logged outcome when the log
already holds one (replay), and otherwise performs the operation and logs its outcome before returning. That one
rule is why re-running a workflow function after a crash is safe: everything it did before the crash comes back
from the log; only the operation that was in flight happens again.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

import apsw

from agent_image import _json
from agent_image._context import (
    STEP_ATTR,
    WORKFLOW_ATTR,
    Execution,
    Queue,
    Recorded,
    StepSpec,
    WorkflowSpec,
    current_execution,
    require_execution,
)
from agent_image.errors import NotInWorkflow, StepError, WorkflowNotFound

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TOPIC = "default"


def _now() -> float:
    return time.time()


# -- decorators -------------------------------------------------------------------------------------------------


@overload
def workflow(fn: F) -> F: ...
@overload
def workflow(*, name: str | None = None, queue: Queue | None = None) -> Callable[[F], F]: ...


def workflow(fn: Any = None, *, name: str | None = None, queue: Queue | None = None) -> Any:
    """Mark a function as a durable workflow. Called inside another workflow, it runs as a child workflow and
    its result is checkpointed in the parent; called outside any runtime, it is a plain function call."""

    def decorate(func: F) -> F:
        spec = WorkflowSpec(name=name or func.__name__, fn=func, queue=queue)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            execution = current_execution.get()
            if execution is None or execution.in_step:
                return func(*args, **kwargs)
            return start_workflow(wrapper, *args, **kwargs).result()

        setattr(wrapper, WORKFLOW_ATTR, spec)
        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


@overload
def step(fn: F) -> F: ...
@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_rate: float = 2.0,
    max_backoff: float = 60.0,
) -> Callable[[F], F]: ...


def step(
    fn: Any = None,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    backoff_rate: float = 2.0,
    max_backoff: float = 60.0,
) -> Any:
    """Mark a function as a step: its result (or final error) is checkpointed before the workflow moves on.
    A failing step is retried `retries` times, waiting `backoff * backoff_rate**n` seconds (at most
    `max_backoff`). Steps are at-least-once (a crash mid-step runs it again); their results are exactly-once."""
    if retries < 0 or backoff < 0 or backoff_rate < 1 or max_backoff < 0:
        raise ValueError("step: retries and backoffs must be >= 0 and backoff_rate >= 1")

    def decorate(func: F) -> F:
        spec = StepSpec(name or func.__name__, retries, backoff, backoff_rate, max_backoff)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            execution = current_execution.get()
            if execution is None or execution.in_step:
                return func(*args, **kwargs)
            return _run_step(execution, spec, func, args, kwargs)

        setattr(wrapper, STEP_ATTR, spec)
        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


# -- steps ------------------------------------------------------------------------------------------------------


def _run_step(
    execution: Execution,
    spec: StepSpec,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    execution.checkpoint()
    seq = execution.next_seq()
    recorded = execution.recorded(seq, "step", spec.name)
    if recorded is not None:
        return _outcome(recorded, spec.name)

    started = _now()
    attempt = 0
    while True:
        attempt += 1
        execution.in_step = True
        try:
            value = func(*args, **kwargs)
            error = None
            break
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            if attempt > spec.retries:
                break
        finally:
            execution.in_step = False
        # A retry wait is a step boundary: cancel and shutdown take effect here (the step re-runs on restart).
        execution.pause_until(_now() + spec.delay(attempt), _now)

    text = None
    if error is None:
        text, value = _json.roundtrip(value, f"step {spec.name!r} returned")
    _append(
        execution,
        seq,
        "step",
        spec.name,
        value_text=text,
        value=value if error is None else None,
        error=error,
        attempts=attempt,
        started_at=started,
    )
    if error is not None:
        raise StepError(spec.name, error["type"], error["message"])
    return value


def _outcome(recorded: Recorded, name: str) -> Any:
    if recorded.error is not None:
        raise StepError(name, recorded.error["type"], recorded.error["message"])
    return recorded.value


def _append(
    execution: Execution,
    seq: int,
    kind: str,
    name: str | None,
    *,
    value_text: str | None = None,
    value: Any = None,
    error: dict[str, str] | None = None,
    attempts: int | None = None,
    started_at: float | None = None,
    also: Callable[[apsw.Connection], None] | None = None,
) -> None:
    """Log operation `seq` of the running workflow (`value` is `value_text` parsed), plus `also` in the same
    transaction."""

    def write(conn: apsw.Connection) -> None:
        log_operation(conn, execution.workflow_id, seq, kind, name, value_text, error, attempts, started_at)
        if also is not None:
            also(conn)

    execution.runtime.store.write(write)
    execution.history.setdefault(seq, {})[kind] = Recorded(kind, name, value, error)


def log_operation(
    conn: apsw.Connection,
    workflow_id: str,
    seq: int | None,
    kind: str,
    name: str | None,
    value_text: str | None = None,
    error: dict[str, str] | None = None,
    attempts: int | None = None,
    started_at: float | None = None,
) -> None:
    conn.execute(
        "INSERT INTO execution_log (workflow_id, seq, kind, name, value, error, attempts, started_at, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            workflow_id,
            seq,
            kind,
            name,
            value_text,
            _json.dump(error, "error") if error else None,
            attempts,
            started_at,
            _now(),
        ),
    )


# -- durable operations -----------------------------------------------------------------------------------------


def workflow_id() -> str:
    """The id of the workflow this code runs in (also inside its steps)."""
    execution = current_execution.get()
    if execution is None:
        raise NotInWorkflow("workflow_id() was called outside a workflow")
    return execution.workflow_id


def sleep(seconds: float) -> None:
    """Durable sleep: the wake-up time is logged, so after a restart the workflow wakes at the original time.
    Outside a workflow it is `time.sleep`."""
    execution = current_execution.get()
    if execution is None or execution.in_step:
        time.sleep(seconds)
        return
    execution.checkpoint()
    seq = execution.next_seq()
    recorded = execution.recorded(seq, "sleep", None)
    if recorded is not None:
        deadline = float(recorded.value)
    else:
        deadline = _now() + max(0.0, float(seconds))
        _append(execution, seq, "sleep", None, value_text=_json.dump(deadline, "sleep deadline"), value=deadline)
    execution.pause_until(deadline, _now)


def recv(topic: str = DEFAULT_TOPIC, timeout: float = 60.0) -> Any:
    """Wait for the next message on `topic` sent to this workflow; None after `timeout` seconds.
    The deadline is logged (it survives restarts) and a message is consumed in the same transaction that logs
    it, so each message is received exactly once."""
    execution = require_execution("recv")
    workflow = execution.workflow_id

    def take(conn: apsw.Connection) -> tuple[bool, str | None]:
        rows = conn.execute(
            "SELECT id, body FROM messages WHERE workflow_id=? AND topic=? AND consumed_at IS NULL ORDER BY id LIMIT 1",
            (workflow, topic),
        ).fetchall()
        if not rows:
            return False, None
        conn.execute("UPDATE messages SET consumed_at=? WHERE id=?", (_now(), rows[0][0]))
        return True, rows[0][1]

    return _wait_for(execution, "recv", topic, timeout, take)


def get_event(target_workflow_id: str, key: str, timeout: float = 60.0) -> Any:
    """The value of event `key` set by workflow `target_workflow_id`, waiting up to `timeout` seconds for it
    (None if it never comes). Inside a workflow the answer is checkpointed; outside it is a plain read."""
    execution = current_execution.get()
    if execution is None or execution.in_step:
        from agent_image.runtime import Runtime

        return Runtime.default().get_event(target_workflow_id, key, timeout=timeout)

    def look(conn: apsw.Connection) -> tuple[bool, str | None]:
        text = read_event(conn, target_workflow_id, key)
        return text is not None, text

    with execution.runtime._watching_event(target_workflow_id, key, execution.wake):
        return _wait_for(execution, "get_event", f"{target_workflow_id}:{key}", timeout, look)


def read_event(conn: apsw.Connection, workflow_id: str, key: str) -> str | None:
    """The JSON text of event `key` of a workflow, None if it is not set."""
    rows = conn.execute("SELECT value FROM events WHERE workflow_id=? AND key=?", (workflow_id, key)).fetchall()
    return rows[0][0] if rows else None


def _wait_for(
    execution: Execution,
    kind: str,
    name: str,
    timeout: float,
    poll: Callable[[apsw.Connection], tuple[bool, str | None]],
) -> Any:
    """Shared shape of recv and get_event: log a deadline once, then poll (inside a write transaction that also
    logs the outcome) until something arrives or the deadline passes."""
    execution.checkpoint()
    seq = execution.next_seq()
    recorded = execution.recorded(seq, kind, name)
    if recorded is not None:
        return recorded.value
    waiting = execution.history.get(seq, {}).get(kind + ".wait")
    if waiting is not None:
        deadline = float(waiting.value)
    else:
        deadline = _now() + max(0.0, float(timeout))
        _append(execution, seq, kind + ".wait", name, value_text=_json.dump(deadline, "deadline"), value=deadline)

    while True:
        execution.wake.clear()
        timed_out = _now() >= deadline

        def attempt(conn: apsw.Connection, timed_out: bool = timed_out) -> tuple[bool, str | None]:
            found, value_text = poll(conn)
            if found or timed_out:
                log_operation(conn, execution.workflow_id, seq, kind, name, value_text)
                return True, value_text
            return False, None

        done, value_text = execution.runtime.store.write(attempt)
        if done:
            value = _json.load(value_text)
            execution.history.setdefault(seq, {})[kind] = Recorded(kind, name, value, None)
            return value
        execution.wait_until(deadline, _now)


def send(destination_id: str, message: Any, topic: str = DEFAULT_TOPIC) -> None:
    """Send `message` to workflow `destination_id`. From a workflow it is sent exactly once (replay skips it)."""
    execution = current_execution.get()
    if execution is None or execution.in_step:
        from agent_image.runtime import Runtime

        Runtime.default().send(destination_id, message, topic)
        return
    body = _json.dump(message, f"message to {destination_id}")
    execution.checkpoint()
    seq = execution.next_seq()
    if execution.recorded(seq, "send", f"{destination_id}:{topic}") is not None:
        return
    _append(
        execution,
        seq,
        "send",
        f"{destination_id}:{topic}",
        also=lambda conn: insert_message(conn, destination_id, topic, body),
    )
    execution.runtime._wake(destination_id)


def insert_message(conn: apsw.Connection, destination_id: str, topic: str, body: str) -> None:
    if not conn.execute("SELECT 1 FROM workflow_state WHERE id=?", (destination_id,)).fetchall():
        raise WorkflowNotFound(f"no workflow {destination_id!r} to send a message to")
    conn.execute(
        "INSERT INTO messages (workflow_id, topic, body, sent_at) VALUES (?, ?, ?, ?)",
        (destination_id, topic, body, _now()),
    )


def set_event(key: str, value: Any) -> None:
    """Publish `value` under `key` for this workflow (readable with `get_event`); the last value wins."""
    execution = require_execution("set_event")
    text = _json.dump(value, f"event {key!r}")
    execution.checkpoint()
    seq = execution.next_seq()
    if execution.recorded(seq, "set_event", key) is not None:
        return

    def upsert(conn: apsw.Connection) -> None:
        conn.execute(
            "INSERT INTO events (workflow_id, key, value, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(workflow_id, key) DO UPDATE SET value=excluded.value, at=excluded.at",
            (execution.workflow_id, key, text, _now()),
        )

    _append(execution, seq, "set_event", key, value_text=text, value=_json.load(text), also=upsert)
    execution.runtime._event_set(execution.workflow_id, key)


def start_workflow(fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Any:
    """Start a workflow and return its handle. Inside a workflow the new one is a child: its id is derived
    from the parent's, its start is checkpointed, and cancelling the parent cancels it."""
    execution = current_execution.get()
    if execution is None or execution.in_step:
        from agent_image.runtime import Runtime

        return Runtime.default().start(fn, args, kwargs)
    return execution.runtime._start_child(execution, fn, args, kwargs)
