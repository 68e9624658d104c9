"""The state of one workflow execution on its thread, and what the decorators attach to functions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_image.errors import NonDeterminismError, NotInWorkflow

if TYPE_CHECKING:
    from agent_image.runtime import Runtime

WORKFLOW_ATTR = "__litefleet_workflow__"
STEP_ATTR = "__litefleet_step__"


@dataclass(frozen=True)
class Queue:
    """A named queue: at most `concurrency` of its workflows run at once on one agent."""

    name: str
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"queue {self.name!r}: concurrency must be >= 1 or None")


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    fn: Callable[..., Any]  # the undecorated function
    queue: Queue | None = None


@dataclass(frozen=True)
class StepSpec:
    name: str
    retries: int = 0
    backoff: float = 1.0
    backoff_rate: float = 2.0
    max_backoff: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): exponential, capped."""
        return float(min(self.backoff * self.backoff_rate ** (attempt - 1), self.max_backoff))


@dataclass(frozen=True)
class Recorded:
    """One durable operation as the execution log holds it."""

    kind: str
    name: str | None
    value: Any
    error: dict[str, str] | None


@dataclass
class Execution:
    """One run of one workflow on one thread. `seq` numbers its durable operations in call order."""

    runtime: Runtime
    workflow_id: str
    name: str
    history: dict[int, dict[str, Recorded]] = field(default_factory=dict)
    seq: int = 0
    in_step: bool = False
    diverged: str | None = None  # kept: tenant code may catch the NonDeterminismError (it is a BaseException)
    wake: threading.Event = field(default_factory=threading.Event)

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
