"""The durable workflow runtime: start, run, recover, cancel, fork and inspect workflows in one SQLite file.

Each running workflow has its own thread. Its function re-runs from the top whenever it (re)starts; the durable
operations in `durable.py` replay what the execution log holds. Status lives in `workflow_state`:

    PENDING  -> RUNNING -> SUCCESS | ERROR          (PENDING only while waiting in a queue)
             \\-> CANCELLED (from PENDING, RUNNING or BLOCKED; cascades to children)
    RUNNING  -> BLOCKED  (replay diverged, or the bundle version cannot resume it; retried at every recovery)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, ClassVar

import apsw
import structlog

from agent_image import _json
from agent_image._context import Execution, Recorded, current_execution
from agent_image._ids import check_id
from agent_image._workers import Workers
from agent_image.bundle import Bundle
from agent_image.durable import insert_message, log_operation, read_event
from agent_image.errors import (
    Draining,
    InvalidRequest,
    NonDeterminismError,
    NotInWorkflow,
    Parked,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from agent_image.store import Store

log = structlog.get_logger("agent_image.runtime")

PENDING, RUNNING, SUCCESS, ERROR, CANCELLED, BLOCKED = (
    "PENDING",
    "RUNNING",
    "SUCCESS",
    "ERROR",
    "CANCELLED",
    "BLOCKED",
)
STATUSES = (PENDING, RUNNING, SUCCESS, ERROR, CANCELLED, BLOCKED)
FINAL = frozenset({SUCCESS, ERROR, CANCELLED})
SETTLED = FINAL | {BLOCKED}

_STATE_COLUMNS = (
    "id, name, status, inputs, output, error, parent_id, queue, bundle_version, blocked_reason, forked_from, "
    "created_at, updated_at"
)


@dataclass(frozen=True)
class WorkflowStatus:
    id: str
    name: str
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: dict[str, str] | None
    parent_id: str | None
    queue: str | None
    bundle_version: str
    blocked_reason: str | None
    forked_from: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkflowStatus:
        inputs = _json.load(row[3])
        return cls(
            id=row[0],
            name=row[1],
            status=row[2],
            args=inputs["args"],
            kwargs=inputs["kwargs"],
            result=_json.load(row[4]),
            error=_json.load(row[5]),
            parent_id=row[6],
            queue=row[7],
            bundle_version=row[8],
            blocked_reason=row[9],
            forked_from=row[10],
            created_at=row[11],
            updated_at=row[12],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepInfo:
    seq: int
    kind: str
    name: str | None
    output: Any
    error: dict[str, str] | None
    attempts: int | None
    started_at: float | None
    finished_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WorkflowHandle:
    """A started workflow. Outside a workflow, `result()` waits for it; inside one, see `_ChildHandle`."""

    def __init__(self, runtime: Runtime, workflow_id: str) -> None:
        self.runtime = runtime
        self.id = workflow_id

    def status(self) -> WorkflowStatus:
        return self.runtime.get(self.id)

    def result(self, timeout: float | None = None) -> Any:
        """Wait until the workflow settles; its result, or WorkflowFailed / TimeoutError."""
        status = self.runtime.wait(self.id, timeout)
        if status.status == SUCCESS:
            return status.result
        if status.status in SETTLED:
            raise WorkflowFailed(self.id, status.status, status.error or _blocked(status))
        raise TimeoutError(f"workflow {self.id} is still {status.status} after {timeout} s")

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"


def _blocked(status: WorkflowStatus) -> dict[str, str] | None:
    return {"type": "Blocked", "message": status.blocked_reason or ""} if status.status == BLOCKED else None


class _ChildHandle(WorkflowHandle):
    """A child started by a running workflow: waiting on it is a durable operation of the parent."""

    def __init__(self, runtime: Runtime, workflow_id: str, parent: Execution) -> None:
        super().__init__(runtime, workflow_id)
        self.parent = parent

    def result(self, timeout: float | None = None) -> Any:
        if current_execution.get() is not self.parent:
            return super().result(timeout)
        return self.runtime._child_result(self.parent, self.id)


class Runtime:
    """One durable runtime over one SQLite file and one bundle.

    `Runtime(path, bundle)` opens the file (creating and migrating it); `recover()` resumes what was running;
    `close()` parks running workflows at their next step boundary and closes the file.
    """

    _default: ClassVar[Runtime | None] = None

    def __init__(self, path: str, bundle: Bundle | ModuleType, *, synchronous: str = "FULL") -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.from_module(bundle)
        self.store = Store(path, synchronous=synchronous)
        self._lock = threading.Lock()
        self._active: dict[str, Execution] = {}
        self._workers = Workers("workflow")
        self._all_parked = threading.Condition(self._lock)
        self._cancelled: set[str] = set()
        self._watchers: dict[tuple[str, ...], set[threading.Event]] = {}
        self._queue_running: Counter[str] = Counter()
        self._draining = False
        self._stopping = False
        self.ready = False
        Runtime._default = self

    @classmethod
    def default(cls) -> Runtime:
        if cls._default is None:
            raise NotInWorkflow("no runtime is open in this process")
        return cls._default

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
        workflow_id = uuid.uuid4().hex if id is None else check_id(id)
        if self._draining:
            raise Draining("this agent is draining and takes no new workflows")
        inputs = _json.dump({"args": list(args), "kwargs": kwargs or {}}, f"the arguments of {spec.name!r} are")
        queue_name = queue or (spec.queue.name if spec.queue else None)
        status = PENDING if queue_name else RUNNING
        existing = self.store.write(lambda c: self._insert(c, workflow_id, spec.name, status, inputs, queue_name, None))
        if existing is not None:
            if existing != spec.name:
                raise WorkflowIdConflict(f"workflow id {workflow_id!r} is already used by a {existing!r} workflow")
            return WorkflowHandle(self, workflow_id)
        if queue_name:
            self._dispatch(queue_name)
        else:
            self._launch(workflow_id, spec.name, list(args), kwargs or {}, {}, None)
        return WorkflowHandle(self, workflow_id)

    def _insert(
        self,
        conn: apsw.Connection,
        workflow_id: str,
        name: str,
        status: str,
        inputs: str,
        queue: str | None,
        parent_id: str | None,
        forked_from: str | None = None,
    ) -> str | None:
        """Insert a workflow row; None when inserted, else the name of the workflow already holding the id."""
        now = time.time()
        conn.execute(
            f"INSERT INTO workflow_state ({_STATE_COLUMNS}) VALUES (?,?,?,?,NULL,NULL,?,?,?,NULL,?,?,?) "
            "ON CONFLICT(id) DO NOTHING",
            (workflow_id, name, status, inputs, parent_id, queue, self.bundle.version, forked_from, now, now),
        )
        if conn.changes() == 0:
            return str(conn.execute("SELECT name FROM workflow_state WHERE id=?", (workflow_id,)).fetchall()[0][0])
        log_operation(conn, workflow_id, None, "created", status)
        return None

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
        try:
            fn = self.bundle.workflows[execution.name].fn
            result = fn(*args, **kwargs)
            diverged = execution.divergence()
            if diverged is not None:
                raise NonDeterminismError(diverged)
            text = _json.dump(result, f"workflow {execution.name!r} returned")
            self._settle(workflow_id, SUCCESS, output=text)
        except (WorkflowCancelled, Parked):
            pass  # cancelled: the row already says so; parked: it stays RUNNING and resumes on restart
        except NonDeterminismError as exc:
            self._settle(workflow_id, BLOCKED, blocked_reason=str(exc))
        except Exception as exc:
            diverged = execution.divergence()
            if self._stopping:
                log.warning("workflow.parked_by_error", workflow=workflow_id, error=str(exc))
            elif diverged is not None:
                self._settle(workflow_id, BLOCKED, blocked_reason=diverged)
            else:
                self._settle(workflow_id, ERROR, error={"type": type(exc).__name__, "message": str(exc)})
        finally:
            current_execution.reset(token)
            with self._lock:
                self._active.pop(workflow_id, None)
                self._cancelled.discard(workflow_id)
                if queue:
                    self._queue_running[queue] -= 1
                if not self._active:
                    self._all_parked.notify_all()
            self._notify_settled(workflow_id)
            if queue and not self._stopping:
                self._dispatch(queue)

    def _settle(
        self,
        workflow_id: str,
        status: str,
        *,
        output: str | None = None,
        error: dict[str, str] | None = None,
        blocked_reason: str | None = None,
    ) -> None:
        """Move a RUNNING workflow to its end state. A concurrent cancel wins (the UPDATE matches nothing)."""
        error_text = _json.dump(error, "error") if error else None

        def write(conn: apsw.Connection) -> None:
            conn.execute(
                "UPDATE workflow_state SET status=?, output=?, error=?, blocked_reason=?, updated_at=? "
                "WHERE id=? AND status=?",
                (status, output, error_text, blocked_reason, time.time(), workflow_id, RUNNING),
            )
            if conn.changes():
                log_operation(conn, workflow_id, None, "status", status, error=error)

        self.store.write(write)
        if status == BLOCKED:
            log.warning("workflow.blocked", workflow=workflow_id, reason=blocked_reason)

    # -- queues -------------------------------------------------------------------------------------------------

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

            def claim(conn: apsw.Connection) -> list[tuple[Any, ...]]:
                return conn.execute(
                    "UPDATE workflow_state SET status=?, updated_at=? WHERE id IN ("
                    "  SELECT id FROM workflow_state WHERE queue=? AND status=? ORDER BY created_at LIMIT ?"
                    ") RETURNING id, name, inputs",
                    (RUNNING, time.time(), queue, PENDING, free),
                ).fetchall()

            claimed = self.store.write(claim)
            # Reserve the slots under the lock so a concurrent dispatch cannot over-fill the queue.
            self._queue_running[queue] += len(claimed)
        for workflow_id, name, inputs_text in claimed:
            inputs = _json.load(inputs_text)
            if not self._launch(workflow_id, name, inputs["args"], inputs["kwargs"], {}, queue):
                with self._lock:
                    self._queue_running[queue] -= 1

    # -- children -----------------------------------------------------------------------------------------------

    def _start_child(
        self,
        parent: Execution,
        workflow: Callable[..., Any] | str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _ChildHandle:
        spec = self.bundle.spec(workflow)
        parent.checkpoint()
        seq = parent.next_seq()
        recorded = parent.recorded(seq, "child", spec.name)
        if recorded is not None:
            return _ChildHandle(self, str(recorded.value), parent)
        child_id = f"{parent.workflow_id}-{seq}"
        inputs = _json.dump({"args": list(args), "kwargs": kwargs}, f"the arguments of child {spec.name!r} are")
        queue = spec.queue.name if spec.queue else None

        def write(conn: apsw.Connection) -> None:
            self._insert(conn, child_id, spec.name, PENDING if queue else RUNNING, inputs, queue, parent.workflow_id)
            log_operation(conn, parent.workflow_id, seq, "child", spec.name, _json.dump(child_id, "child id"))

        self.store.write(write)
        parent.history.setdefault(seq, {})["child"] = Recorded("child", spec.name, child_id, None)
        if queue:
            self._dispatch(queue)
        else:
            self._launch(child_id, spec.name, list(args), kwargs, {}, None)
        return _ChildHandle(self, child_id, parent)

    def _child_result(self, parent: Execution, child_id: str) -> Any:
        parent.checkpoint()
        seq = parent.next_seq()
        recorded = parent.recorded(seq, "child.result", child_id)
        if recorded is None:
            with self._watching_settle(child_id, parent.wake):
                while True:
                    parent.wake.clear()
                    status = self.get(child_id)
                    if status.status in FINAL:
                        break
                    parent.wait_until(time.time() + 3600, time.time)
            error = status.error if status.status == ERROR else None
            if status.status == CANCELLED:
                error = {"type": "Cancelled", "message": f"child workflow {child_id} was cancelled"}
            text = _json.dump(status.result, "child result") if error is None else None
            self.store.write(lambda c: log_operation(c, parent.workflow_id, seq, "child.result", child_id, text, error))
            recorded = Recorded("child.result", child_id, status.result if error is None else None, error)
            parent.history.setdefault(seq, {})["child.result"] = recorded
        if recorded.error is not None:
            raise WorkflowFailed(
                child_id, CANCELLED if recorded.error["type"] == "Cancelled" else ERROR, recorded.error
            )
        return recorded.value

    # -- reading ------------------------------------------------------------------------------------------------

    def get(self, workflow_id: str) -> WorkflowStatus:
        rows = self.store.read(
            lambda c: c.execute(f"SELECT {_STATE_COLUMNS} FROM workflow_state WHERE id=?", (workflow_id,)).fetchall()
        )
        if not rows:
            raise WorkflowNotFound(f"no workflow {workflow_id!r}")
        return WorkflowStatus.from_row(rows[0])

    def exists(self, workflow_id: str) -> bool:
        rows = self.store.read(
            lambda c: c.execute("SELECT 1 FROM workflow_state WHERE id=?", (workflow_id,)).fetchall()
        )
        return bool(rows)

    def list_workflows(
        self, *, status: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowStatus]:
        clauses, params = [], []
        if status:
            clauses.append("status=?")
            params.append(status)
        if name:
            clauses.append("name=?")
            params.append(name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_STATE_COLUMNS} FROM workflow_state {where} ORDER BY created_at DESC, id LIMIT ?"
        rows = self.store.read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [WorkflowStatus.from_row(row) for row in rows]

    def steps(self, workflow_id: str) -> list[StepInfo]:
        """Every durable operation of a workflow in order: steps, sleeps, messages, events, children."""
        self.get(workflow_id)
        rows = self.store.read(
            lambda c: c.execute(
                "SELECT seq, kind, name, value, error, attempts, started_at, at FROM execution_log "
                "WHERE workflow_id=? AND seq IS NOT NULL ORDER BY seq, lsn",
                (workflow_id,),
            ).fetchall()
        )
        return [StepInfo(r[0], r[1], r[2], _json.load(r[3]), _json.load(r[4]), r[5], r[6], r[7]) for r in rows]

    def wait(self, workflow_id: str, timeout: float | None = None) -> WorkflowStatus:
        """The workflow's status once it is settled (SUCCESS/ERROR/CANCELLED/BLOCKED) or `timeout` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        woken = threading.Event()
        with self._watching_settle(workflow_id, woken):
            while True:
                if (
                    workflow_id in self._active
                    and not self._stopping
                    and woken.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                ):
                    woken.clear()
                status = self.get(workflow_id)
                if status.status in SETTLED or self._stopping:  # shutting down: answer with what it is now
                    return status
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return status
                woken.wait(remaining if remaining is not None else 1.0)

    def in_flight(self) -> int:
        """Workflows accepted but not settled: running here or waiting in a queue."""
        return int(
            self.store.read(
                lambda c: c.execute(
                    "SELECT count(*) FROM workflow_state WHERE status IN (?, ?)", (PENDING, RUNNING)
                ).fetchall()[0][0]
            )
        )

    def counts(self) -> dict[str, int]:
        rows = self.store.read(
            lambda c: c.execute("SELECT status, count(*) FROM workflow_state GROUP BY status").fetchall()
        )
        return {status: 0 for status in STATUSES} | {row[0]: row[1] for row in rows}

    # -- changing -----------------------------------------------------------------------------------------------

    def cancel(self, workflow_id: str) -> WorkflowStatus:
        """Cancel a workflow and its descendants that have not settled. Cancelling twice changes nothing."""

        def write(conn: apsw.Connection) -> list[str]:
            if not conn.execute("SELECT 1 FROM workflow_state WHERE id=?", (workflow_id,)).fetchall():
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            ids = [
                row[0]
                for row in conn.execute(
                    "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT w.id FROM workflow_state w "
                    "JOIN tree ON w.parent_id = tree.id) "
                    "UPDATE workflow_state SET status=?, updated_at=? "
                    "WHERE id IN tree AND status IN (?, ?, ?) RETURNING id",
                    (workflow_id, CANCELLED, time.time(), PENDING, RUNNING, BLOCKED),
                ).fetchall()
            ]
            for cancelled in ids:
                log_operation(conn, cancelled, None, "status", CANCELLED)
            return ids

        ids = self.store.write(write)
        with self._lock:
            for cancelled in ids:
                execution = self._active.get(cancelled)
                if execution is not None:
                    self._cancelled.add(cancelled)
                    execution.wake.set()
        for cancelled in ids:
            self._notify_settled(cancelled)
        return self.get(workflow_id)

    def send(self, workflow_id: str, message: Any, topic: str = "default") -> None:
        """Deliver `message` to a workflow's `recv(topic)`. Each send is one message (not deduplicated)."""
        body = _json.dump(message, "the message is")
        self.store.write(lambda c: insert_message(c, workflow_id, topic, body))
        self._wake(workflow_id)

    def get_event(self, workflow_id: str, key: str, timeout: float = 0.0) -> Any:
        """The value of event `key` of a workflow, waiting up to `timeout` seconds; None if it is not set."""
        deadline = time.monotonic() + timeout
        woken = threading.Event()
        with self._watching_event(workflow_id, key, woken):
            while True:
                woken.clear()
                text = self.store.read(lambda c: read_event(c, workflow_id, key))
                if text is not None:
                    return _json.load(text)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    return None
                woken.wait(remaining)

    def fork(self, workflow_id: str, from_step: int, *, new_id: str | None = None) -> WorkflowHandle:
        """A new workflow with the same name and inputs that keeps the recorded outcomes of operations
        1..from_step-1 and runs everything from operation `from_step` again, under the current bundle."""
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 1:
            raise InvalidRequest(f"from_step counts operations from 1, got {from_step!r}")
        fork_id = uuid.uuid4().hex if new_id is None else check_id(new_id, "new_id")
        if self._draining:
            raise Draining("this agent is draining and takes no new workflows")

        def write(conn: apsw.Connection) -> tuple[str, str, str | None]:
            rows = conn.execute("SELECT name, inputs, queue FROM workflow_state WHERE id=?", (workflow_id,)).fetchall()
            if not rows:
                raise WorkflowNotFound(f"no workflow {workflow_id!r}")
            name, inputs, queue = rows[0]
            self.bundle.spec(name)
            if self._insert(conn, fork_id, name, RUNNING, inputs, None, None, forked_from=workflow_id):
                raise WorkflowIdConflict(f"workflow id {fork_id!r} is already used")
            conn.execute(
                "INSERT INTO execution_log (workflow_id, seq, kind, name, value, error, attempts, started_at, at) "
                "SELECT ?, seq, kind, name, value, error, attempts, started_at, at FROM execution_log "
                "WHERE workflow_id=? AND seq IS NOT NULL AND seq < ? ORDER BY lsn",
                (fork_id, workflow_id, from_step),
            )
            return name, inputs, queue

        name, inputs_text, _ = self.store.write(write)
        inputs = _json.load(inputs_text)
        self._launch(fork_id, name, inputs["args"], inputs["kwargs"], self._history(fork_id), None)
        return WorkflowHandle(self, fork_id)

    # -- recovery and shutdown ----------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """Resume every RUNNING workflow (and retry BLOCKED ones) whose code this bundle can run; block the rest
        with a reason. Safe to call again: workflows already running here are skipped."""
        rows = self.store.read(
            lambda c: c.execute(
                f"SELECT {_STATE_COLUMNS} FROM workflow_state WHERE status IN (?, ?) ORDER BY created_at",
                (RUNNING, BLOCKED),
            ).fetchall()
        )
        resumed = blocked = 0
        for row in rows:
            status = WorkflowStatus.from_row(row)
            reason = self.bundle.cannot_resume(status.name, status.bundle_version)
            if reason is not None:
                blocked += 1
                if status.status != BLOCKED or status.blocked_reason != reason:
                    self._set_blocked(status.id, reason)
                continue
            if status.status == BLOCKED:
                self._unblock(status.id)
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
        for queue in self._pending_queues():
            self._dispatch(queue)
        self.ready = True
        log.info("runtime.recovered", resumed=resumed, blocked=blocked, bundle_version=self.bundle.version)
        return {"resumed": resumed, "blocked": blocked}

    def _history(self, workflow_id: str) -> dict[int, dict[str, Recorded]]:
        rows = self.store.read(
            lambda c: c.execute(
                "SELECT seq, kind, name, value, error FROM execution_log WHERE workflow_id=? AND seq IS NOT NULL",
                (workflow_id,),
            ).fetchall()
        )
        history: dict[int, dict[str, Recorded]] = {}
        for seq, kind, name, value, error in rows:
            history.setdefault(seq, {})[kind] = Recorded(kind, name, _json.load(value), _json.load(error))
        return history

    def _set_blocked(self, workflow_id: str, reason: str) -> None:
        def write(conn: apsw.Connection) -> None:
            conn.execute(
                "UPDATE workflow_state SET status=?, blocked_reason=?, updated_at=? WHERE id=?",
                (BLOCKED, reason, time.time(), workflow_id),
            )
            log_operation(conn, workflow_id, None, "status", BLOCKED, error={"type": "Blocked", "message": reason})

        self.store.write(write)
        log.warning("workflow.blocked", workflow=workflow_id, reason=reason)

    def _unblock(self, workflow_id: str) -> None:
        def write(conn: apsw.Connection) -> None:
            conn.execute(
                "UPDATE workflow_state SET status=?, blocked_reason=NULL, updated_at=? WHERE id=?",
                (RUNNING, time.time(), workflow_id),
            )
            log_operation(conn, workflow_id, None, "status", RUNNING)

        self.store.write(write)

    def _pending_queues(self) -> list[str]:
        rows = self.store.read(
            lambda c: c.execute(
                "SELECT DISTINCT queue FROM workflow_state WHERE status=? AND queue IS NOT NULL", (PENDING,)
            ).fetchall()
        )
        return [row[0] for row in rows]

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
            woken += [event for events in self._watchers.values() for event in events]
        for event in woken:
            event.set()

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
        if Runtime._default is self:
            Runtime._default = None
        log.info("runtime.closed", parked=running - stuck, stuck=stuck)
        return stuck

    # -- wake-ups -----------------------------------------------------------------------------------------------

    def _check_interrupt(self, execution: Execution) -> None:
        if execution.workflow_id in self._cancelled:
            raise WorkflowCancelled(execution.workflow_id)
        if self._stopping:
            raise Parked(execution.workflow_id)

    def _wake(self, workflow_id: str) -> None:
        with self._lock:
            execution = self._active.get(workflow_id)
        if execution is not None:
            execution.wake.set()

    @contextmanager
    def _watch(self, key: tuple[str, ...], event: threading.Event) -> Iterator[None]:
        """Have `event` set when `key` happens: ("settled", id) or ("event", id, key)."""
        with self._lock:
            self._watchers.setdefault(key, set()).add(event)
        try:
            yield
        finally:
            with self._lock:
                watchers = self._watchers.get(key)
                if watchers is not None:
                    watchers.discard(event)
                    if not watchers:
                        del self._watchers[key]

    def _fire(self, key: tuple[str, ...]) -> None:
        with self._lock:
            watchers = list(self._watchers.get(key, ()))
        for event in watchers:
            event.set()

    def _watching_settle(self, workflow_id: str, event: threading.Event) -> Any:
        return self._watch(("settled", workflow_id), event)

    def _notify_settled(self, workflow_id: str) -> None:
        self._fire(("settled", workflow_id))

    def _watching_event(self, workflow_id: str, key: str, event: threading.Event) -> Any:
        return self._watch(("event", workflow_id, key), event)

    def _event_set(self, workflow_id: str, key: str) -> None:
        self._fire(("event", workflow_id, key))
