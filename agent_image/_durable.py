"""What tenant code calls: the decorators and the durable operations a workflow performs.

Every operation follows `_replay`'s rule: `begin` (a step boundary, the next sequence number, the logged
outcome if any), then either return what the log holds or perform the operation and `record` it.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar, overload

import apsw

from agent_image import _json, _sysdb
from agent_image._errors import NotInWorkflow, StepError, WorkflowFailed
from agent_image._handles import WorkflowHandle
from agent_image._replay import (
    Execution,
    Host,
    Recorded,
    begin,
    current_execution,
    default_host,
    record,
    require_execution,
    returned_at_once,
)
from agent_image._specs import STEP_ATTR, WORKFLOW_ATTR, Queue, StepSpec, WorkflowSpec
from agent_image._status import CANCELLED, ERROR, FINAL, PENDING, RUNNING

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
            return _run_step(execution, spec, func, args, kwargs, sys._getframe(1))

        setattr(wrapper, STEP_ATTR, spec)
        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _run_step(
    execution: Execution,
    spec: StepSpec,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    caller: FrameType,
) -> Any:
    seq, recorded = begin(execution, "step", spec.name)
    if recorded is None:
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
        recorded = record(
            execution,
            seq,
            "step",
            spec.name,
            value_text=text,
            value=value if error is None else None,
            error=error,
            attempts=attempt,
            started_at=started,
            with_finish=error is None and returned_at_once(execution, caller),
        )
    if recorded.error is not None:
        raise StepError(spec.name, recorded.error["type"], recorded.error["message"])
    return recorded.value


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
    seq, recorded = begin(execution, "sleep", None)
    if recorded is None:
        deadline = _now() + max(0.0, float(seconds))
        recorded = record(
            execution, seq, "sleep", None, value_text=_json.dump(deadline, "sleep deadline"), value=deadline
        )
    execution.pause_until(float(recorded.value), _now)


def recv(topic: str = DEFAULT_TOPIC, timeout: float = 60.0) -> Any:
    """Wait for the next message on `topic` sent to this workflow; None after `timeout` seconds.
    The deadline is logged (it survives restarts) and a message is consumed in the same transaction that logs
    it, so each message is received exactly once."""
    execution = require_execution("recv")
    return _wait_for(
        execution, "recv", topic, timeout, lambda conn: _sysdb.take_message(conn, execution.workflow_id, topic)
    )


def get_event(target_workflow_id: str, key: str, timeout: float = 60.0) -> Any:
    """The value of event `key` set by workflow `target_workflow_id`, waiting up to `timeout` seconds for it
    (None if it never comes). Inside a workflow the answer is checkpointed; outside it is a plain read."""
    execution = current_execution.get()
    if execution is None or execution.in_step:
        return default_host().get_event(target_workflow_id, key, timeout=timeout)

    def look(conn: apsw.Connection) -> tuple[bool, str | None]:
        text = _sysdb.read_event(conn, target_workflow_id, key)
        return text is not None, text

    with execution.runtime.watchers.watch(("event", target_workflow_id, key), execution.wake):
        return _wait_for(execution, "get_event", f"{target_workflow_id}:{key}", timeout, look)


def _wait_for(
    execution: Execution,
    kind: str,
    name: str,
    timeout: float,
    poll: Callable[[apsw.Connection], tuple[bool, str | None]],
) -> Any:
    """Shared shape of recv and get_event: log a deadline once, then poll (inside a write transaction that also
    logs the outcome) until something arrives or the deadline passes."""
    seq, recorded = begin(execution, kind, name)
    if recorded is not None:
        return recorded.value
    waiting = execution.history.get(seq, {}).get(kind + ".wait")
    if waiting is not None:
        deadline = float(waiting.value)
    else:
        deadline = _now() + max(0.0, float(timeout))
        record(execution, seq, kind + ".wait", name, value_text=_json.dump(deadline, "deadline"), value=deadline)

    while True:
        execution.wake.clear()
        timed_out = _now() >= deadline

        def attempt(conn: apsw.Connection, timed_out: bool = timed_out) -> tuple[bool, str | None]:
            found, value_text = poll(conn)
            if found or timed_out:
                _sysdb.log_operation(conn, execution.workflow_id, seq, kind, name, value_text)
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
        default_host().send(destination_id, message, topic)
        return
    body = _json.dump(message, f"message to {destination_id}")
    seq, recorded = begin(execution, "send", f"{destination_id}:{topic}")
    if recorded is not None:
        return
    also = functools.partial(_sysdb.insert_message, destination_id=destination_id, topic=topic, body=body)
    record(execution, seq, "send", f"{destination_id}:{topic}", also=also)
    execution.runtime._wake(destination_id)


def set_event(key: str, value: Any) -> None:
    """Publish `value` under `key` for this workflow (readable with `get_event`); the last value wins."""
    execution = require_execution("set_event")
    text = _json.dump(value, f"event {key!r}")
    seq, recorded = begin(execution, "set_event", key)
    if recorded is not None:
        return
    also = functools.partial(_sysdb.set_event, workflow_id=execution.workflow_id, key=key, text=text)
    record(execution, seq, "set_event", key, value_text=text, value=_json.load(text), also=also)
    execution.runtime.watchers.fire(("event", execution.workflow_id, key))


# -- child workflows --------------------------------------------------------------------------------------------


def start_workflow(fn: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Any:
    """Start a workflow and return its handle. Inside a workflow the new one is a child: its id is derived
    from the parent's, its start is checkpointed, and cancelling the parent cancels it."""
    execution = current_execution.get()
    if execution is None or execution.in_step:
        return default_host().start(fn, args, kwargs)
    return _start_child(execution, fn, args, kwargs)


class _ChildHandle(WorkflowHandle):
    """A child started by a running workflow: waiting on it is a durable operation of the parent."""

    def __init__(self, runtime: Host, workflow_id: str, parent: Execution) -> None:
        super().__init__(runtime, workflow_id)
        self.parent = parent

    def result(self, timeout: float | None = None) -> Any:
        if current_execution.get() is not self.parent:
            return super().result(timeout)
        return _child_result(self.parent, self.id)


def _start_child(
    parent: Execution, workflow: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _ChildHandle:
    host = parent.runtime
    spec = host.bundle.spec(workflow)
    seq, recorded = begin(parent, "child", spec.name)
    if recorded is not None:
        return _ChildHandle(host, str(recorded.value), parent)
    child_id = f"{parent.workflow_id}-{seq}"
    inputs = _json.dump({"args": list(args), "kwargs": kwargs}, f"the arguments of child {spec.name!r} are")
    queue = spec.queue.name if spec.queue else None
    insert = functools.partial(
        _sysdb.insert_workflow,
        workflow_id=child_id,
        name=spec.name,
        status=PENDING if queue else RUNNING,
        inputs=inputs,
        bundle_version=host.bundle.version,
        queue=queue,
        parent_id=parent.workflow_id,
    )
    record(parent, seq, "child", spec.name, value_text=_json.dump(child_id, "child id"), value=child_id, also=insert)
    host._run_new(child_id, spec.name, queue, list(args), kwargs)
    return _ChildHandle(host, child_id, parent)


def _child_result(parent: Execution, child_id: str) -> Any:
    host = parent.runtime
    seq, recorded = begin(parent, "child.result", child_id)
    if recorded is None:
        with host.watchers.watch(("settled", child_id), parent.wake):
            while True:
                parent.wake.clear()
                status = host.get(child_id)
                if status.status in FINAL:
                    break
                parent.wait_until(time.time() + 3600, time.time)
        error = status.error if status.status == ERROR else None
        if status.status == CANCELLED:
            error = {"type": "Cancelled", "message": f"child workflow {child_id} was cancelled"}
        text = _json.dump(status.result, "child result") if error is None else None
        value = status.result if error is None else None
        recorded = record(parent, seq, "child.result", child_id, value_text=text, value=value, error=error)
    if recorded.error is not None:
        raise WorkflowFailed(child_id, CANCELLED if recorded.error["type"] == "Cancelled" else ERROR, recorded.error)
    return recorded.value
