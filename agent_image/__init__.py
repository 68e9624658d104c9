"""The litefleet agent runtime: durable workflows whose whole state is one SQLite file.

from agent_image import workflow, step, sleep, recv

@step(retries=3)
def fetch(url: str) -> str: ...

@workflow
def research(url: str) -> str:
    page = fetch(url)
    approval = recv("approve", timeout=3600)
    return page if approval else "rejected"

This package's face is `__all__` below; every `_module` is private. Beside it: `agent_image.server` (the agent's
HTTP API), `agent_image.container` (what runs it inside a tenant container), `agent_image.contract` (the
container's environment and secrets file, shared with the control plane), `agent_image.logs`. What the control
plane must do to start, feed (secrets via `docker exec`), call (bearer tokens) and fail over (lease) an agent:
agent_image/SECURITY-NOTES.md.
"""

from agent_image._bundle import Bundle, load_bundle
from agent_image._durable import (
    get_event,
    recv,
    send,
    set_event,
    sleep,
    start_workflow,
    step,
    workflow,
    workflow_id,
)
from agent_image._errors import (
    AgentError,
    DatabaseInUse,
    Draining,
    InvalidRequest,
    NonDeterminismError,
    NotInWorkflow,
    NotJSONError,
    StepError,
    UnknownWorkflow,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from agent_image._handles import WorkflowHandle
from agent_image._runtime import Runtime
from agent_image._specs import Queue
from agent_image._status import StepInfo, WorkflowStatus
from agent_image._store import Store

__all__ = [
    "AgentError",
    "Bundle",
    "DatabaseInUse",
    "Draining",
    "InvalidRequest",
    "NonDeterminismError",
    "NotInWorkflow",
    "NotJSONError",
    "Queue",
    "Runtime",
    "StepError",
    "StepInfo",
    "Store",
    "UnknownWorkflow",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowIdConflict",
    "WorkflowNotFound",
    "WorkflowStatus",
    "get_event",
    "load_bundle",
    "recv",
    "send",
    "set_event",
    "sleep",
    "start_workflow",
    "step",
    "workflow",
    "workflow_id",
]
