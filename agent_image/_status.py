"""A workflow's status as the API reports it, and one entry of its execution log.

PENDING  -> RUNNING -> SUCCESS | ERROR          (PENDING only while waiting in a queue)
         \\-> CANCELLED (from PENDING, RUNNING or BLOCKED; cascades to children)
RUNNING  -> BLOCKED  (replay diverged, or the bundle version cannot resume it; retried at every recovery)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agent_image import _json

PENDING, RUNNING, SUCCESS, ERROR, CANCELLED, BLOCKED = (
    "PENDING",
    "RUNNING",
    "SUCCESS",
    "ERROR",
    "CANCELLED",
    "BLOCKED",
)
STATUSES = (PENDING, RUNNING, SUCCESS, ERROR, CANCELLED, BLOCKED)
FINAL = frozenset({SUCCESS, ERROR, CANCELLED})
SETTLED = FINAL | {BLOCKED}


@dataclass(frozen=True)
class WorkflowStatus:
    id: str
    name: str
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
    error: dict[str, str] | None
    parent_id: str | None
    queue: str | None
    bundle_version: str
    blocked_reason: str | None
    forked_from: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkflowStatus:
        """From a row of `_sysdb.STATE_COLUMNS`."""
        inputs = _json.load(row[3])
        return cls(
            id=row[0],
            name=row[1],
            status=row[2],
            args=inputs["args"],
            kwargs=inputs["kwargs"],
            result=_json.load(row[4]),
            error=_json.load(row[5]),
            parent_id=row[6],
            queue=row[7],
            bundle_version=row[8],
            blocked_reason=row[9],
            forked_from=row[10],
            created_at=row[11],
            updated_at=row[12],
        )

    @property
    def blocked_error(self) -> dict[str, str] | None:
        """The reason a BLOCKED workflow gives, shaped like an error; None for any other status."""
        return {"type": "Blocked", "message": self.blocked_reason or ""} if self.status == BLOCKED else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepInfo:
    seq: int
    kind: str
    name: str | None
    output: Any
    error: dict[str, str] | None
    attempts: int | None
    started_at: float | None
    finished_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
