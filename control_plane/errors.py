"""Failures a user of the API can meet: one exception type each, one HTTP status, one stable code."""

from __future__ import annotations


class FleetError(Exception):
    status = 400
    code = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After (a refusal worth retrying soon)


class InvalidRequest(FleetError):
    status, code = 422, "invalid_request"


class UnknownBundle(InvalidRequest):
    code = "unknown_bundle"


class BodyTooLarge(FleetError):
    status, code = 413, "body_too_large"


class Unauthorized(FleetError):
    status, code = 401, "unauthorized"


class Forbidden(FleetError):
    status, code = 403, "forbidden"


class NotFound(FleetError):
    status, code = 404, "not_found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class NodeNotFound(NotFound):
    code = "node_not_found"


class OperationNotFound(NotFound):
    code = "operation_not_found"


class WorkflowNotFound(NotFound):
    code = "workflow_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class Conflict(FleetError):
    status, code = 409, "conflict"


class TenantExists(Conflict):
    code = "tenant_exists"


class NodeExists(Conflict):
    code = "node_exists"


class NodeNotEmpty(Conflict):
    code = "node_not_empty"


class NodeNotReady(Conflict):
    code = "node_not_ready"


class TenantBusy(Conflict):
    code = "tenant_not_active"


class NoCapacityError(FleetError):
    status, code = 409, "no_capacity"


class RuntimeUnavailableError(NoCapacityError):
    code = "runtime_unavailable"


class NodeLacksRuntime(Conflict):
    code = "node_lacks_runtime"


class EngineUnreachableError(FleetError):
    status, code = 422, "engine_unreachable"


class NoAgentRunning(FleetError):
    status, code = 503, "no_agent_running"


class AgentUnavailable(FleetError):
    """The agents that could take or answer the request do not answer now (frozen, moving, or gone)."""

    status, code = 503, "agent_unavailable"
    retry_after: int | None = 2


class AgentMoving(FleetError):
    """A request was held while its agent is moved (services/holds.py) and the move outlasted `hold_timeout`, or
    `max_held_requests` are held already: nothing was started; retry (with the same id, if it had one)."""

    status, code = 503, "agent_moving"
    retry_after: int | None = 2


class TooManyWaits(FleetError):
    """Past the cap on concurrent waits (settings.max_waits): retry, or poll without waiting."""

    status, code = 429, "too_many_waits"
    retry_after: int | None = 1


class OperationFailed(Exception):
    """Raised inside an operation: it ends `failed` with this message (the fleet is left as the log says) and its
    `code` (the operation's `result["error_code"]`; the error reads `code: message` for the subclasses below)."""

    code = "operation_failed"


class PreflightFailed(OperationFailed):
    """Something an operation needs is missing; nothing was stopped yet (refused before acting)."""

    code = "preflight_failed"


class StoreUnreachable(PreflightFailed):
    code = "store_unreachable"


class NodeUnreachable(PreflightFailed):
    code = "node_unreachable"


class NoCapacityLeft(PreflightFailed):
    code = "no_capacity"


class ReplicaCorrupt(PreflightFailed):
    """A warm move's follower rebuilt the agent's replica and it fails its integrity check: the replica is corrupt
    (the agent's own database may be sound). Nothing was stopped: a cold move would restore the same replica."""

    code = "replica_corrupt"


class RolledBack(OperationFailed):
    """A move failed after it stopped an agent; the old incarnation serves again (same generation, volume, node)."""

    code = "rolled_back"


class RollbackFailed(OperationFailed):
    """A move failed and its old incarnation could not be started again: the agent is marked `failed` for the
    stuck-state detector and the next operation (which reinstates it before anything else)."""

    code = "rollback_failed"


class ObserverUnavailable(FleetError):
    status, code = 503, "observer_unavailable"


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"
