"""A handle on a started workflow: its id, its status, and waiting for its result."""

from __future__ import annotations

from typing import Any

from agent_image._errors import WorkflowFailed
from agent_image._replay import Host
from agent_image._status import SETTLED, SUCCESS, WorkflowStatus


class WorkflowHandle:
    """A started workflow. Outside a workflow, `result()` waits for it; inside one, waiting on a child is a
    durable operation of the parent (`_durable._ChildHandle`)."""

    def __init__(self, runtime: Host, workflow_id: str) -> None:
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
            raise WorkflowFailed(self.id, status.status, status.error or status.blocked_error)
        raise TimeoutError(f"workflow {self.id} is still {status.status} after {timeout} s")

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"
