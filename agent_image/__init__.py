"""The litefleet agent runtime: durable workflows whose whole state is one SQLite file.

from agent_image import workflow, step, sleep, recv

@step(retries=3)
def fetch(url: str) -> str: ...

@workflow
def research(url: str) -> str:
    page = fetch(url)
    approval = recv("approve", timeout=3600)
    return page if approval else "rejected"
"""

from agent_image._context import Queue
from agent_image.bundle import Bundle, load_bundle
from agent_image.durable import (
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
from agent_image.errors import (
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
from agent_image.runtime import Runtime, StepInfo, WorkflowHandle, WorkflowStatus

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
