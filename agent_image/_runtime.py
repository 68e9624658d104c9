"""The durable workflow runtime: start, run, recover, cancel, fork and inspect workflows in one SQLite file.

Each running workflow has its own thread. Its function re-runs from the top whenever it (re)starts; the durable
operations in `_durable` replay what the execution log holds (`_replay`). Statuses are in `_status`, every SQL
statement in `_sysdb`.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import apsw
import structlog

from agent_image import _json, _sysdb
from agent_image._bundle import Bundle
from agent_image._errors import (
    Draining,
    InvalidRequest,
    NonDeterminismError,
    Parked,
    WorkflowCancelled,
    WorkflowIdConflict,
)
from agent_image._handles import WorkflowHandle
from agent_image._ids import check_id, random_id
from agent_image._replay import (
    Execution,
    Recorded,
    close_host,
    current_execution,
    flush_deferred,
    load_history,
    open_host,
)
from agent_image._status import (
    BLOCKED,
    ERROR,
    PENDING,
    RUNNING,
    SETTLED,
    STATUSES,
    SUCCESS,
    StepInfo,
    WorkflowStatus,
)
from agent_image._store import Store
from agent_image._watchers import Watchers
from agent_image._workers import Workers

log = structlog.get_logger("agent_image.runtime")


class Runtime:
    """One durable runtime over one SQLite file and one bundle.

    `Runtime(path, bundle)` opens the file (creating and migrating it); `recover()` resumes what was running;
    `close()` parks running workflows at their next step boundary and closes the file. `checkpoints=False` under
    Litestream: see `Store`.
    """

    def __init__(
        self, path: str, bundle: Bundle | ModuleType, *, synchronous: str = "FULL", checkpoints: bool = True
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.from_module(bundle)
        self.store = Store(path, synchronous=synchronous, checkpoints=checkpoints)
        self._lock = threading.Lock()
        self._active: dict[str, Execution] = {}
        self._workers = Workers("workflow")
        self._all_parked = threading.Condition(self._lock)
        self._cancelled: set[str] = set()
        self.watchers = Watchers()
        self._queue_running: Counter[str] = Counter()
        self._draining = False
        self._stopping = False
        self.ready = False
        open_host(self)

    # -- starting -----------------------------------------------------------------------------------------------

    def start(
        self,
        workflow: Callable[..., Any] | str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        queue: str | None = None,
    ) -> WorkflowHandle:
        """Start `workflow` (a decorated function or its name).

        Idempotent by id: starting an id that exists returns a handle to the existing workflow and runs
        nothing (a different workflow name under the same id is a WorkflowIdConflict).
        """
        spec = self.bundle.spec(workflow)
        workflow_id = random_id() if id is None else check_id(id)
        if self._draining:
            raise Draining("this agent is draining and takes no new workflows")
        inputs = _json.dump({"args": list(args), "kwargs": kwargs or {}}, f"the arguments of {spec.name!r} are")
        queue_name = queue or (spec.queue.name if spec.queue else None)
        existing = self.store.write(
            lambda conn: _sysdb.insert_workflow(
                conn,
                workflow_id,
                spec.name,
                PENDING if queue_name else RUNNING,
                inputs,
                bundle_version=self.bundle.version,
                queue=queue_name,
            )
        )
        if existing is not None:
            if existing != spec.name:
                raise WorkflowIdConflict(f"workflow id {workflow_id!r} is already used by a {existing!r} workflow")
            return WorkflowHandle(self, workflow_id)
        self._run_new(workflow_id, spec.name, queue_name, list(args), kwargs or {})
        return WorkflowHandle(self, workflow_id)

    def _run_new(self, workflow_id: str, name: str, queue: str | None, args: list[Any], kwargs: Any) -> None:
        """Run a workflow just inserted: through its queue (PENDING) or right away (RUNNING)."""
        if queue:
            self._dispatch(queue)
        else:
            self._launch(workflow_id, name, args, kwargs, {}, None)

    def _launch(
        self,
        workflow_id: str,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        history: dict[int, dict[str, Recorded]],
        queue: str | None,
    ) -> bool:
        """Run the workflow on a worker thread; False if it already runs here or the runtime is stopping.
        A queued workflow's slot in `_queue_running` is reserved by the caller and released by `_run`."""
        execution = Execution(self, workflow_id, name, history)
        with self._lock:
            if workflow_id in self._active or self._stopping:
                return False
            self._active[workflow_id] = execution
        self._workers.submit(self._run, execution, args, kwargs, queue)
        return True

    def _run(self, execution: Execution, args: list[Any], kwargs: dict[str, Any], queue: str | None) -> None:
        workflow_id = execution.workflow_id
        token = current_execution.set(execution)
        final: WorkflowStatus | None = None
        try:
            fn = self.bundle.workflows[execution.name].fn
            result = fn(*args, **kwargs)
            if execution.parked:  # the code caught its parking and returned: it still resumes on restart
                raise Parked(workflow_id)
            diverged = execution.divergence()
            if diverged is not None:
                raise NonDeterminismError(diverged)
            text = _json.dump(result, f"workflow {execution.name!r} returned")
            final = self._settle(execution, SUCCESS, output=text)
        except (WorkflowCancelled, Parked):
            pass  # cancelled: the row already says so; parked: it stays RUNNING and resumes on restart
        except NonDeterminismError as exc:
            self._settle(execution, BLOCKED, blocked_reason=str(exc))
        except Exception as exc:
            diverged = execution.divergence()
            if self._stopping:
                log.warning("workflow.parked_by_error", workflow=workflow_id, error=str(exc))
            elif diverged is not None:
                self._settle(execution, BLOCKED, blocked_reason=diverged)
            else:
                final = self._settle(execution, ERROR, error={"type": type(exc).__name__, "message": str(exc)})
        finally:
            current_execution.reset(token)
            if execution.deferred is not None:  # it did not settle (parked, cancelled): keep its last outcome
                try:
                    flush_deferred(execution)
                except Exception as exc:
                    log.warning("workflow.checkpoint_lost", workflow=workflow_id, error=str(exc))
            with self._lock:
                self._active.pop(workflow_id, None)
                self._cancelled.discard(workflow_id)
                if queue:
                    self._queue_running[queue] -= 1
                if not self._active:
                    self._all_parked.notify_all()
            self.watchers.fire(("settled", workflow_id), final)
            if queue and not self._stopping:
                self._dispatch(queue)

    def _settle(
        self,
        execution: Execution,
        status: str,
        *,
        output: str | None = None,
        error: dict[str, str] | None = None,
        blocked_reason: str | None = None,
    ) -> WorkflowStatus | None:
        """Move a RUNNING workflow to its end state. A concurrent cancel wins (the UPDATE matches nothing).
        Returns the committed row of a SUCCESS or ERROR workflow (final: it never changes again, so a waiter can
        answer with it instead of reading it back); None for BLOCKED (a cancel or recovery may change it) or
        when the cancel won. A deferred checkpoint (`_replay.record`) commits in the same transaction."""
        workflow_id, deferred = execution.workflow_id, execution.deferred

        def write(conn: apsw.Connection) -> tuple[Any, ...] | None:
            if deferred is not None:
                deferred(conn)
            return _sysdb.settle(conn, workflow_id, status, output, error, blocked_reason)

        row = self.store.write(write)
        execution.deferred = None
        if status == BLOCKED:
            log.warning("workflow.blocked", workflow=workflow_id, reason=blocked_reason)
            return None
        return None if row is None else WorkflowStatus.from_row(row)

    def _dispatch(self, queue: str) -> None:
        """Start as many PENDING workflows of `queue` as its concurrency allows, oldest first."""
        queue_spec = self.bundle.queues.get(queue)
        concurrency = queue_spec.concurrency if queue_spec else None
        with self._lock:
            if self._stopping:
                return
            free = -1  # SQLite: LIMIT -1 is no limit
            if concurrency is not None:
                free = concurrency - self._queue_running[queue]
                if free <= 0:
                    return
            claimed = self.store.write(lambda conn: _sysdb.claim_queued(conn, queue, free))
            # Reserve the slots under the lock so a concurrent dispatch cannot over-fill the queue.
            self._queue_running[queue] += len(claimed)
        for workflow_id, name, inputs_text in claimed:
            inputs = _json.load(inputs_text)
            if not self._launch(workflow_id, name, inputs["args"], inputs["kwargs"], {}, queue):
                with self._lock:
                    self._queue_running[queue] -= 1

    # -- reading ------------------------------------------------------------------------------------------------

    def get(self, workflow_id: str) -> WorkflowStatus:
        return self.store.read(lambda conn: _sysdb.workflow(conn, workflow_id))

    def exists(self, workflow_id: str) -> bool:
        return self.store.read(lambda conn: _sysdb.exists(conn, workflow_id))

    def list_workflows(
        self, *, status: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowStatus]:
        return self.store.read(lambda conn: _sysdb.list_workflows(conn, status, name, limit))

    def steps(self, workflow_id: str) -> list[StepInfo]:
        """Every durable operation of a workflow in order: steps, sleeps, messages, events, children."""
        self.get(workflow_id)
        return self.store.read(lambda conn: _sysdb.steps(conn, workflow_id))

    def wait(self, workflow_id: str, timeout: float | None = None) -> WorkflowStatus:
        """The workflow's status once it is settled (SUCCESS/ERROR/CANCELLED/BLOCKED), `timeout` passed, or the
        runtime began to stop (then at once, with the status it has)."""

        def look() -> tuple[bool, WorkflowStatus]:
            status = self.get(workflow_id)
            return status.status in SETTLED, status

        key = ("settled", workflow_id)
        return self.watchers.wait_for(
            key, timeout, look, stopping=self._is_stopping, idle=lambda: workflow_id in self._active
        )

    def in_flight(self) -> int:
        """Workflows accepted but not settled: running here or waiting in a queue."""
        return self.store.read(lambda conn: _sysdb.count_with_status(conn, PENDING, RUNNING))

    def counts(self) -> dict[str, int]:
        return {status: 0 for status in STATUSES} | self.store.read(_sysdb.counts)

    def get_event(self, workflow_id: str, key: str, timeout: float = 0.0) -> Any:
        """The value of event `key` of a workflow, waiting up to `timeout` seconds; None if it is not set (or
        the runtime began to stop)."""

        def look() -> tuple[bool, Any]:
            text = self.store.read(lambda conn: _sysdb.read_event(conn, workflow_id, key))
            return text is not None, _json.load(text)

        return self.watchers.wait_for(("event", workflow_id, key), timeout, look, stopping=self._is_stopping)

    # -- changing -----------------------------------------------------------------------------------------------

    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Cancel a workflow and its descendants that have not settled. Cancelling twice changes nothing."""
        ids = self.store.write(lambda conn: _sysdb.cancel_tree(conn, workflow_id))
        with self._lock:
            for cancelled in ids:
                execution = self._active.get(cancelled)
                if execution is not None:
                    self._cancelled.add(cancelled)
                    execution.wake.set()
        for cancelled in ids:
            self.watchers.fire(("settled", cancelled))
        return self.get(workflow_id)

    def send(self, workflow_id: str, message: Any, topic: str = "default") -> None:
        """Deliver `message` to a workflow's `recv(topic)`. Each send is one message (not deduplicated)."""
        body = _json.dump(message, "the message is")
        self.store.write(lambda conn: _sysdb.insert_message(conn, workflow_id, topic, body))
        self._wake(workflow_id)

    def fork(self, workflow_id: str, from_step: int, *, new_id: str | None = None) -> WorkflowHandle:
        """A new workflow with the same name and inputs that keeps the recorded outcomes of operations
        1..from_step-1 and runs everything from operation `from_step` again, under the current bundle."""
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 1:
            raise InvalidRequest(f"from_step counts operations from 1, got {from_step!r}")
        fork_id = random_id() if new_id is None else check_id(new_id, "new_id")
        if self._draining:
            raise Draining("this agent is draining and takes no new workflows")

        def write(conn: apsw.Connection) -> tuple[str, str]:
            name, inputs = _sysdb.fork_source(conn, workflow_id)
            self.bundle.spec(name)
            version = self.bundle.version
            if _sysdb.insert_workflow(
                conn, fork_id, name, RUNNING, inputs, bundle_version=version, forked_from=workflow_id
            ):
                raise WorkflowIdConflict(f"workflow id {fork_id!r} is already used")
            _sysdb.copy_log(conn, fork_id, workflow_id, from_step)
            return name, inputs

        name, inputs_text = self.store.write(write)
        inputs = _json.load(inputs_text)
        self._launch(fork_id, name, inputs["args"], inputs["kwargs"], self._history(fork_id), None)
        return WorkflowHandle(self, fork_id)

    # -- recovery and shutdown ----------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Resume every RUNNING workflow (and retry BLOCKED ones) whose code this bundle can run; block the rest
        with a reason. Safe to call again: workflows already running here are skipped."""
        resumed = blocked = 0
        for status in self.store.read(lambda conn: _sysdb.with_status(conn, RUNNING, BLOCKED)):
            reason = self.bundle.cannot_resume(status.name, status.bundle_version)
            if reason is not None:
                blocked += 1
                if status.status != BLOCKED or status.blocked_reason != reason:
                    self.store.write(functools.partial(_sysdb.set_blocked, workflow_id=status.id, reason=reason))
                    log.warning("workflow.blocked", workflow=status.id, reason=reason)
                continue
            if status.status == BLOCKED:
                self.store.write(functools.partial(_sysdb.unblock, workflow_id=status.id))
            resumed += 1
            if status.queue:
                with self._lock:
                    self._queue_running[status.queue] += 1
            launched = self._launch(
                status.id, status.name, status.args, status.kwargs, self._history(status.id), status.queue
            )
            if status.queue and not launched:
                with self._lock:
                    self._queue_running[status.queue] -= 1
        for queue in self.store.read(_sysdb.pending_queues):
            self._dispatch(queue)
        self.ready = True
        log.info("runtime.recovered", resumed=resumed, blocked=blocked, bundle_version=self.bundle.version)
        return {"resumed": resumed, "blocked": blocked}

    def _history(self, workflow_id: str) -> dict[int, dict[str, Recorded]]:
        return load_history(self.store.read(lambda conn: _sysdb.history(conn, workflow_id)))

    def drain(self) -> int:
        """Stop taking new workflows; running and queued ones go on. Returns how many are in flight."""
        self._draining = True
        return self.in_flight()

    @property
    def draining(self) -> bool:
        return self._draining

    def interrupt(self) -> None:
        """The start of a shutdown, without blocking: take no new work, have every running workflow park at its
        next step boundary, and answer every waiter (`wait`, `get_event`) at once with what it has now.
        `close()` calls it first; the server calls it as soon as it is told to stop, before it waits for open
        requests. Safe to call again."""
        with self._lock:
            self._stopping = True
            self._draining = True
            woken = [execution.wake for execution in self._active.values()]
        for event in woken:
            event.set()
        self.watchers.fire_all()

    def close(self, timeout: float = 30.0) -> int:
        """Park every running workflow at its next step boundary (a step in flight finishes first), then close
        the file. Returns how many workflows did not reach a boundary within `timeout` (they re-run their
        in-flight step after restart). Safe to call twice."""
        self.interrupt()
        with self._lock:
            running = len(self._active)
            self._all_parked.wait_for(lambda: not self._active, timeout)
            stuck = len(self._active)
        self.store.close()
        close_host(self)
        log.info("runtime.closed", parked=running - stuck, stuck=stuck)
        return stuck

    # -- wake-ups -----------------------------------------------------------------------------------------------

    def _is_stopping(self) -> bool:
        return self._stopping

    def _check_interrupt(self, execution: Execution) -> None:
        if execution.workflow_id in self._cancelled:
            raise WorkflowCancelled(execution.workflow_id)
        if self._stopping:
            execution.parked = True
            raise Parked(execution.workflow_id)

    def _wake(self, workflow_id: str) -> None:
        with self._lock:
            execution = self._active.get(workflow_id)
        if execution is not None:
            execution.wake.set()
