"""Every failure a runtime user can meet, each with a stable `code` the agent server returns as JSON."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the runtime's ordinary errors. `code` is stable; `status` is the HTTP status the server uses.
    Each subclass names both in its header: `class Draining(AgentError, code="draining", status=503)`."""

    code = "runtime_error"
    status = 500

    def __init_subclass__(cls, *, code: str | None = None, status: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if status is not None:
            cls.status = status


class InvalidRequest(AgentError, ValueError, code="invalid_request", status=422):
    """Bad input from a caller: a malformed id, a missing or out-of-range parameter, a body JSON cannot hold."""


class RuntimeStorageError(AgentError, code="storage_error"): ...


class DatabaseInUse(RuntimeStorageError, code="database_in_use", status=409): ...


class NotJSONError(AgentError, TypeError, code="not_json", status=422):
    """A workflow argument, step result, message or event value that JSON cannot hold."""


class UnknownWorkflow(AgentError, code="unknown_workflow", status=404): ...


class WorkflowNotFound(AgentError, code="workflow_not_found", status=404): ...


class WorkflowIdConflict(AgentError, code="workflow_id_conflict", status=409): ...


class Draining(AgentError, code="draining", status=503): ...


class LeaseUnconfirmed(AgentError, code="lease_unconfirmed", status=503):
    """The agent could not confirm for `lease_timeout` that CURRENT still names its generation: it acknowledges
    no write until it can (a successor may already be serving)."""


class ReplicationUnconfirmed(AgentError, code="replication_unconfirmed", status=504):
    """A `durability=replicated` call: the replica did not confirm in time (504) or the confirmation failed (503)."""

    def __init__(self, message: str, *, timed_out: bool = True, workflow_id: str | None = None) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.workflow_id = workflow_id
        self.status = 504 if timed_out else 503


class NotInWorkflow(AgentError, code="not_in_workflow", status=400): ...


class StepError(Exception):
    """A step failed after all its retries. Raised the same way live and on replay, so workflow code that
    catches it behaves identically after a crash (the original exception is not pickled, only described)."""

    def __init__(self, step: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step!r} failed: {error_type}: {message}")
        self.step = step
        self.error_type = error_type
        self.message = message


class WorkflowFailed(Exception):
    """Waiting on a workflow (or child workflow) that ended in ERROR or CANCELLED."""

    def __init__(self, workflow_id: str, status: str, error: dict[str, str] | None) -> None:
        detail = f": {error['type']}: {error['message']}" if error else ""
        super().__init__(f"workflow {workflow_id} ended {status}{detail}")
        self.workflow_id = workflow_id
        self.status = status
        self.error = error


# Control flow, not errors: BaseException so a workflow's `except Exception` cannot swallow them.


class WorkflowCancelled(BaseException):
    """Unwinds a workflow whose cancellation was requested; raised at its next durable operation."""


class NonDeterminismError(BaseException):
    """Replay met a different operation than the one recorded at the same position: the code changed."""


class Parked(BaseException):
    """Unwinds a workflow at a step boundary because the runtime is shutting down; it resumes on restart."""
