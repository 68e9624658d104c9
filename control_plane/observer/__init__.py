"""The observer: read-only copies of agents' databases from their replicas in object storage (see `facade`).

models      errors, typed answers (Source, Freshness, WorkflowList, ...), ObserverSettings
queries     SQL over a copy (one read transaction on a fresh read-only connection)
processes   litestream configs, `restore -f` followers, one-off restores, the replica's position
copies      followed agents: live followers up to the cap, periodic restores beyond, upkeep and rebalance
snapshots   point-in-time restores, cached
facade      Observer: the one object the control plane holds
lag         LagSampler: replication lag measured against the store (written on the agents' rows)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from control_plane.observer.facade import Observer
    from control_plane.observer.lag import LagSampler, LagThresholds

# The working parts load on first use: the API's routes need only the models and errors above, and the observer
# itself is built by the background start after the API serves (control_plane/background.py).
_LAZY = {"Observer": "facade", "LagSampler": "lag", "LagThresholds": "lag"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)


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
