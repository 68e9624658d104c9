"""Replay: one run of one workflow on its thread, and the rule every durable operation follows.

An operation takes the next sequence number of the running workflow (`begin`); when the log already holds an
outcome for it, that outcome is returned (replay); otherwise the operation is performed and its outcome logged
(`record`) before it returns. That one rule is why re-running a workflow function after a crash is safe:
everything it did before the crash comes back from the log; only the operation that was in flight happens again.
"""

from __future__ import annotations

import bisect
import dis
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Protocol

import apsw

from agent_image import _json, _sysdb
from agent_image._errors import NonDeterminismError, NotInWorkflow
from agent_image._status import WorkflowStatus

if TYPE_CHECKING:
    from agent_image._bundle import Bundle
    from agent_image._store import Store
    from agent_image._watchers import Watchers


class Host(Protocol):
    """What running workflows and their handles use of the runtime (`Runtime` is the one implementation; this
    protocol keeps the durable operations from importing it)."""

    store: Store
    bundle: Bundle
    watchers: Watchers

    def get(self, workflow_id: str) -> WorkflowStatus: ...
    def wait(self, workflow_id: str, timeout: float | None = None) -> WorkflowStatus: ...
    def start(
        self, workflow: Callable[..., Any] | str, args: tuple[Any, ...] | list[Any] = ..., kwargs: Any = ...
    ) -> Any: ...
    def send(self, workflow_id: str, message: Any, topic: str = ...) -> None: ...
    def get_event(self, workflow_id: str, key: str, timeout: float = ...) -> Any: ...
    def _check_interrupt(self, execution: Execution) -> None: ...
    def _wake(self, workflow_id: str) -> None: ...
    def _run_new(self, workflow_id: str, name: str, queue: str | None, args: list[Any], kwargs: Any) -> None: ...


_open: list[Host] = []  # the runtime open in this process, for operations called outside any workflow


def open_host(host: Host) -> None:
    _open[:] = [host]


def close_host(host: Host) -> None:
    if _open and _open[0] is host:
        _open.clear()


def default_host() -> Host:
    if not _open:
        raise NotInWorkflow("no runtime is open in this process")
    return _open[0]


@dataclass(frozen=True)
class Recorded:
    """One durable operation as the execution log holds it."""

    kind: str
    name: str | None
    value: Any
    error: dict[str, str] | None


def load_history(rows: list[tuple[Any, ...]]) -> dict[int, dict[str, Recorded]]:
    """Rows of `_sysdb.history` by sequence number and kind."""
    history: dict[int, dict[str, Recorded]] = {}
    for seq, kind, name, value, error in rows:
        history.setdefault(seq, {})[kind] = Recorded(kind, name, _json.load(value), _json.load(error))
    return history


@dataclass
class Execution:
    """One run of one workflow on one thread. `seq` numbers its durable operations in call order."""

    runtime: Host
    workflow_id: str
    name: str
    history: dict[int, dict[str, Recorded]] = field(default_factory=dict)
    seq: int = 0
    in_step: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    # Kept, since tenant code may catch what was raised (NonDeterminismError, Parked are BaseExceptions):
    diverged: str | None = None
    parked: bool = False
    # The checkpoint of a step the workflow function returns at once, committed with its finish (`record`):
    deferred: Callable[[apsw.Connection], None] | None = None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def recorded(self, seq: int, kind: str, name: str | None) -> Recorded | None:
        """What the log holds for operation `seq` of `kind`, None if it has not happened yet.

        Raises NonDeterminismError when the log holds a different operation at `seq`: the workflow's code no
        longer makes the calls it made when it ran first.
        """
        entries = self.history.get(seq)
        if not entries:
            return None
        family = kind.split(".")[0]
        for entry in entries.values():
            if entry.kind.split(".")[0] != family or entry.name != name:
                self.diverged = self.diverged or (
                    f"workflow {self.workflow_id} ({self.name}) operation {seq}: the log holds "
                    f"{entry.kind} {entry.name!r}, the code now calls {kind} {name!r}"
                )
                raise NonDeterminismError(self.diverged)
        return entries.get(kind)

    def divergence(self) -> str | None:
        """Why this run's operations disagree with the log, once the workflow function has ended (returned or
        raised): a different operation at the same position (`recorded` raised, even if the code caught it), or
        the log holds operations past the last one the code performed. None when the replay matched the log."""
        if self.diverged is not None:
            return self.diverged
        leftover = sorted(seq for seq in self.history if seq > self.seq)
        if not leftover:
            return None
        first = next(iter(self.history[leftover[0]].values()))
        return (
            f"workflow {self.workflow_id} ({self.name}) ended after operation {self.seq}, but the log holds "
            f"{len(leftover)} more from operation {leftover[0]} on ({first.kind} {first.name!r}): the code no "
            "longer makes the calls it made when it ran first"
        )

    def checkpoint(self) -> None:
        """A step boundary: raise if the workflow was cancelled or the runtime is shutting down."""
        self.runtime._check_interrupt(self)

    def wait_until(self, deadline: float, clock: Callable[[], float]) -> None:
        """Block until `deadline` (wall clock) or until woken; checks interruptions before and after.

        Callers clear `wake` before re-checking their condition; the check before waiting catches a cancel or
        shutdown whose wake-up that clear swallowed (they set their flag before setting `wake`)."""
        self.checkpoint()
        remaining = deadline - clock()
        if remaining > 0:
            self.wake.wait(remaining)
        self.checkpoint()

    def pause_until(self, deadline: float, clock: Callable[[], float]) -> None:
        """Block until `deadline` even if woken meanwhile (by a message, say); interruptions still raise."""
        while clock() < deadline:
            self.wake.clear()
            self.wait_until(deadline, clock)


current_execution: ContextVar[Execution | None] = ContextVar("litefleet_execution", default=None)


def require_execution(operation: str) -> Execution:
    execution = current_execution.get()
    if execution is None or execution.in_step:
        where = "inside a step" if execution else "outside a workflow"
        raise NotInWorkflow(f"{operation}() is a workflow operation; it was called {where}")
    return execution


def begin(execution: Execution, kind: str, name: str | None) -> tuple[int, Recorded | None]:
    """The preamble of every durable operation: a step boundary, the operation's sequence number, and what the
    log holds for it (None: perform it now). Raises when cancelled, parked, or the replay diverged."""
    flush_deferred(execution)
    execution.checkpoint()
    seq = execution.next_seq()
    return seq, execution.recorded(seq, kind, name)


def record(
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
    also: Callable[[apsw.Connection], object] | None = None,
    with_finish: bool = False,
) -> Recorded:
    """Log operation `seq` of the running workflow (`value` is `value_text` parsed), plus `also` in the same
    transaction, and remember it for the rest of this run.

    `with_finish`: the workflow function returns this operation's value at once (`returned_at_once`), so the entry
    is committed in the transaction that settles the workflow (`Runtime._settle`) instead of one of its own: one
    fsync fewer. Equivalent for crash recovery: until that commit nothing outside this thread has seen the value
    (no workflow code ran after the operation, no later operation began, and callers see the workflow's result
    only through the settle), so a crash before it is a crash while the operation ran: recovery runs it again,
    as it would have anyway (steps are at-least-once). After it, both the entry and the finish are durable. If the
    workflow does not settle (parked, cancelled) the entry is committed on its own (`flush_deferred`).
    """

    def write(conn: apsw.Connection) -> None:
        _sysdb.log_operation(conn, execution.workflow_id, seq, kind, name, value_text, error, attempts, started_at)
        if also is not None:
            also(conn)

    if with_finish:
        flush_deferred(execution)
        execution.deferred = write
    else:
        execution.runtime.store.write(write)
    recorded = Recorded(kind, name, value, error)
    execution.history.setdefault(seq, {})[kind] = recorded
    return recorded


def flush_deferred(execution: Execution) -> None:
    """Commit a deferred entry (`record(with_finish=True)`) on its own. Safe to call again: it clears it."""
    write = execution.deferred
    if write is not None:
        execution.runtime.store.write(write)
        execution.deferred = None


_RETURNS = frozenset({"RETURN_VALUE", "RETURN_CONST"})
_CALLS = frozenset({"CALL", "CALL_FUNCTION_EX", "CALL_KW"})
_layouts: dict[CodeType, tuple[list[int], list[str]]] = {}


def returned_at_once(execution: Execution, frame: FrameType | None) -> bool:
    """Whether `frame`, the caller of a durable operation, is the workflow function itself and returns the call's
    value at once: the next instruction after the call is a return, so no workflow code runs in between (a
    `finally` or `with` exit would be instructions in between). A builtin that called the step, as in
    `return list(map(a_step, xs))`, counts as the call: each such step's entry is then committed when the next
    operation begins (`begin`), the last with the finish; what runs in between is that builtin and whatever it
    calls (workflow code, deterministic by contract, as everywhere in a workflow)."""
    if frame is None:
        return False
    spec = execution.runtime.bundle.workflows.get(execution.name)
    if spec is None or frame.f_code is not getattr(spec.fn, "__code__", None):
        return False
    layout = _layouts.get(frame.f_code)
    if layout is None:
        instructions = list(dis.get_instructions(frame.f_code))
        layout = _layouts[frame.f_code] = ([i.offset for i in instructions], [i.opname for i in instructions])
    offsets, names = layout
    at = bisect.bisect_right(offsets, frame.f_lasti)  # the next instruction (f_lasti may point into the caches)
    return 0 < at < len(names) and names[at - 1] in _CALLS and names[at] in _RETURNS
