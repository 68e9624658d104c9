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

Every name below is imported on first use (PEP 562 `__getattr__`), not when the package is: the container's
entrypoint and its secrets writer import `agent_image.contract`/`agent_image._store` only, and paid ~110 ms of
imports (structlog, asyncio, the whole runtime; `python -X importtime` in the image) for names they never touch
(issue 14: a faster agent start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_EXPORTS = {
    "AgentError": "agent_image._errors",
    "Bundle": "agent_image._bundle",
    "DatabaseInUse": "agent_image._errors",
    "Draining": "agent_image._errors",
    "InvalidRequest": "agent_image._errors",
    "NonDeterminismError": "agent_image._errors",
    "NotInWorkflow": "agent_image._errors",
    "NotJSONError": "agent_image._errors",
    "Queue": "agent_image._specs",
    "Runtime": "agent_image._runtime",
    "StepError": "agent_image._errors",
    "StepInfo": "agent_image._status",
    "Store": "agent_image._store",
    "UnknownWorkflow": "agent_image._errors",
    "WorkflowCancelled": "agent_image._errors",
    "WorkflowFailed": "agent_image._errors",
    "WorkflowHandle": "agent_image._handles",
    "WorkflowIdConflict": "agent_image._errors",
    "WorkflowNotFound": "agent_image._errors",
    "WorkflowStatus": "agent_image._status",
    "get_event": "agent_image._durable",
    "load_bundle": "agent_image._bundle",
    "recv": "agent_image._durable",
    "send": "agent_image._durable",
    "set_event": "agent_image._durable",
    "sleep": "agent_image._durable",
    "start_workflow": "agent_image._durable",
    "step": "agent_image._durable",
    "workflow": "agent_image._durable",
    "workflow_id": "agent_image._durable",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_image' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
