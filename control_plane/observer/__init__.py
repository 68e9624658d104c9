"""The observer: read-only copies of agents' databases from their replicas in object storage (see `facade`).

models      errors, typed answers (Source, Freshness, WorkflowList, ...), ObserverSettings
queries     SQL over a copy (one read transaction on a fresh read-only connection)
processes   litestream configs, `restore -f` followers, one-off restores, the replica's position
copies      followed agents: live followers up to the cap, periodic restores beyond, upkeep and rebalance
snapshots   point-in-time restores, cached
facade      Observer: the one object the control plane holds
lag         LagSampler: replication lag measured against the store (written on the agents' rows)
"""

from control_plane.observer.facade import Observer
from control_plane.observer.lag import LagSampler, LagThresholds
from control_plane.observer.models import (
    PROBLEM_STATUSES,
    AgentRef,
    AgentWorkflow,
    CopyKind,
    CopyUnreadable,
    EventRecord,
    FollowState,
    Freshness,
    LogEntry,
    NoStateAt,
    ObserverError,
    ObserverSettings,
    ProblemReport,
    ReplicaNotFound,
    Source,
    StepRecord,
    Unavailable,
    WorkflowDetail,
    WorkflowError,
    WorkflowInfo,
    WorkflowList,
    WorkflowNotInCopy,
)

__all__ = [
    "PROBLEM_STATUSES",
    "AgentRef",
    "AgentWorkflow",
    "CopyKind",
    "CopyUnreadable",
    "EventRecord",
    "FollowState",
    "Freshness",
    "LagSampler",
    "LagThresholds",
    "LogEntry",
    "NoStateAt",
    "Observer",
    "ObserverError",
    "ObserverSettings",
    "ProblemReport",
    "ReplicaNotFound",
    "Source",
    "StepRecord",
    "Unavailable",
    "WorkflowDetail",
    "WorkflowError",
    "WorkflowInfo",
    "WorkflowList",
    "WorkflowNotInCopy",
]
