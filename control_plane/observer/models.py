"""The observer's vocabulary: errors, typed answers (where an answer came from and how fresh it is), settings."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

ERROR, BLOCKED = "ERROR", "BLOCKED"
PROBLEM_STATUSES = (ERROR, BLOCKED)
KNOWN_SCHEMA_VERSION = 1  # agent_image.store.SCHEMA_VERSION when this module was written
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
STATE_COLUMNS = (
    "id, name, status, inputs, output, error, parent_id, queue, bundle_version, blocked_reason, forked_from, "
    "created_at, updated_at"
)


# -- errors ---------------------------------------------------------------------------------------------------------


class ObserverError(Exception):
    code = "observer_error"


class ReplicaNotFound(ObserverError):
    """No replica (or no generation) in object storage for this agent."""

    code = "replica_not_found"


class NoStateAt(ObserverError):
    """The replica holds nothing at or before the requested time or transaction."""

    code = "no_state_at"


class WorkflowNotInCopy(ObserverError):
    code = "workflow_not_found"


class CopyUnreadable(ObserverError):
    code = "copy_unreadable"


# -- typed answers --------------------------------------------------------------------------------------------------


class CopyKind(StrEnum):
    follow = "follow"
    periodic = "periodic"
    snapshot = "snapshot"


@dataclass(frozen=True, order=True)
class AgentRef:
    tenant: str
    agent: int
    generation: int

    def __str__(self) -> str:
        return f"{self.tenant}/{self.agent}/gen-{self.generation}"


@dataclass(frozen=True)
class Freshness:
    """How current a copy is. `txid`: the copy holds at least this transaction of the replica. `applied_at`: when
    the copy last changed (follow: last applied update; periodic/snapshot: when it was restored). The replica
    fields say what object storage held when it was last compared with the copy, at `checked_at` (queries with
    `check_replica=True`, snapshots, and every periodic pass): `seconds_behind` is then 0 when the copy had the
    replica's newest transaction, else how long the oldest transaction the copy lacks had been in the replica.
    None: unknown. (What the agent committed but has not synced yet is invisible here: see replication lag.)"""

    txid: int
    applied_at: dt.datetime | None
    as_of: dt.datetime | None = None  # snapshots at a point in time: the requested time
    replica_txid: int | None = None
    replica_written_at: dt.datetime | None = None  # when the replica's newest transaction was uploaded
    seconds_behind: float | None = None
    checked_at: dt.datetime | None = None

    @property
    def caught_up(self) -> bool | None:
        return None if self.replica_txid is None else self.txid >= self.replica_txid


@dataclass(frozen=True)
class Source:
    """Where an answer came from: which generation's replica, which kind of copy, and how fresh it is."""

    ref: AgentRef
    kind: CopyKind
    freshness: Freshness
    schema_version: int

    @property
    def tenant(self) -> str:
        return self.ref.tenant

    @property
    def agent(self) -> int:
        return self.ref.agent

    @property
    def generation(self) -> int:
        return self.ref.generation


@dataclass(frozen=True)
class WorkflowError:
    type: str
    message: str

    @classmethod
    def parse(cls, text: str | None) -> WorkflowError | None:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return cls("Unparseable", text[:500])
        if isinstance(value, dict):
            return cls(str(value.get("type", "Error")), str(value.get("message", "")))
        return cls("Error", str(value)[:500])


@dataclass(frozen=True)
class WorkflowInfo:
    """One row of the agent's `workflow_state`. JSON values stay JSON text (`*_json`); `.result`/`.inputs`
    decode them."""

    id: str
    name: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    result_json: str | None
    error: WorkflowError | None
    blocked_reason: str | None
    parent_id: str | None
    queue: str | None
    bundle_version: str
    forked_from: str | None
    inputs_json: str

    @property
    def result(self) -> Any:
        return None if self.result_json is None else json.loads(self.result_json)

    @property
    def inputs(self) -> Any:
        return json.loads(self.inputs_json)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkflowInfo:
        return cls(
            id=row[0],
            name=row[1],
            status=row[2],
            inputs_json=row[3],
            result_json=row[4],
            error=WorkflowError.parse(row[5]),
            parent_id=row[6],
            queue=row[7],
            bundle_version=row[8],
            blocked_reason=row[9],
            forked_from=row[10],
            created_at=utc(row[11]),
            updated_at=utc(row[12]),
        )


@dataclass(frozen=True)
class StepRecord:
    """One durable operation of a workflow (step, sleep, message, event, child), as `Runtime.steps` lists them."""

    seq: int
    kind: str
    name: str | None
    output_json: str | None
    error: WorkflowError | None
    attempts: int | None
    started_at: dt.datetime | None
    finished_at: dt.datetime


@dataclass(frozen=True)
class LogEntry:
    """One row of the append-only `execution_log` (transitions included: created, status)."""

    lsn: int
    seq: int | None
    kind: str
    name: str | None
    value_json: str | None
    error: WorkflowError | None
    at: dt.datetime


@dataclass(frozen=True)
class EventRecord:
    key: str
    value_json: str
    at: dt.datetime


@dataclass(frozen=True)
class WorkflowList:
    source: Source
    workflows: list[WorkflowInfo]
    counts: dict[str, int]  # status -> number of workflows in the copy (all of them, not only the listed page)


@dataclass(frozen=True)
class WorkflowDetail:
    source: Source
    workflow: WorkflowInfo
    steps: list[StepRecord]
    events: list[EventRecord]
    log: list[LogEntry]

    @property
    def errors(self) -> list[LogEntry]:
        return [entry for entry in self.log if entry.error is not None]


@dataclass(frozen=True)
class AgentWorkflow:
    source: Source
    workflow: WorkflowInfo


@dataclass(frozen=True)
class Unavailable:
    ref: AgentRef
    reason: str


@dataclass(frozen=True)
class ProblemReport:
    """Workflows in the asked statuses across every followed agent; agents whose copy could not be read are
    listed in `unavailable`, never silently left out."""

    workflows: list[AgentWorkflow]
    unavailable: list[Unavailable]
    agents_checked: int


@dataclass(frozen=True)
class FollowState:
    ref: AgentRef
    kind: CopyKind  # follow (a live litestream process) or periodic
    pid: int | None
    ready: bool
    txid: int | None
    applied_at: dt.datetime | None
    last_used: dt.datetime
    last_change: dt.datetime | None
    restarts: int
    last_error: str | None


@dataclass(frozen=True)
class ObserverSettings:
    cache_dir: Path
    max_followers: int = 32  # live `restore -f` processes at once (~20 MiB RSS each); the rest are periodic
    follow_interval: float = 1.0  # seconds between a follower's polls (each poll is a LIST: S3 request cost)
    periodic_interval: float = 30.0  # seconds between full restores of a followed agent beyond the cap
    periodic_concurrency: int = 2  # periodic restores running at once
    tick: float = 1.0  # seconds between upkeep passes (restarts, periodic restores, rebalance)
    rebalance_margin: float = 10.0  # a periodic agent replaces a follower only if it was active this much later
    rebalance_interval: float = 10.0  # at most one follower swap per this many seconds
    snapshot_cache: int = 64  # snapshot files kept (least recently used removed first)
    restore_timeout: float = 300.0
    integrity_check: str = "quick"  # for snapshot and periodic restores: none, quick, full
    stop_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_followers < 0:
            raise ValueError("max_followers must be >= 0")
        if self.integrity_check not in ("none", "quick", "full"):
            raise ValueError("integrity_check must be none, quick or full")


# -- the observer ---------------------------------------------------------------------------------------------------


# -- names and times ------------------------------------------------------------------------------------------------


def check_name(value: str) -> str:
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"not a valid tenant name: {value!r}")
    return value


def make_ref(tenant: str, agent: int, generation: int) -> AgentRef:
    if agent < 0 or generation < 1:
        raise ValueError(f"agent must be >= 0 and generation >= 1, not {agent}/{generation}")
    return AgentRef(check_name(tenant), int(agent), int(generation))


def copy_key(ref: AgentRef) -> str:
    return f"{ref.tenant}--{ref.agent}--g{ref.generation}"


def utc(stamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, dt.UTC)


def as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
