"""What the decorators attach to functions, and what a bundle is made of: workflow, step and queue specs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
