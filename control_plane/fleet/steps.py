"""The one interface through which the fleet's hands and the runners record what they did."""

from __future__ import annotations

from typing import Any, Protocol


class StepLog(Protocol):
    def step(self, name: str, message: str = "", *, agent: int | None = None, **detail: Any) -> None:
        """Append a line to the operation's log (and an event), e.g. `steps.step("agent.started", agent=0)`."""
