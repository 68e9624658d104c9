"""Answers from the observer's read-only copies: a tenant's history at a point in time, workflows of agents that
are not running (retired ordinals, hibernated tenants, agents being moved), and fleet-wide problems. Every answer
says where it came from (`source`) and how fresh it is (`freshness`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from control_plane.db.models import AgentPublic, AgentState
from control_plane.errors import ObserverUnavailable, WorkflowNotFound
from control_plane.observer import (
    PROBLEM_STATUSES,
    NoStateAt,
    ObserverError,
    ReplicaNotFound,
    Source,
    WorkflowDetail,
    WorkflowError,
    WorkflowInfo,
    WorkflowList,
)
from control_plane.services.tenants import find_tenant

if TYPE_CHECKING:
    from control_plane.observer import Observer


def require(observer: Observer | None) -> Observer:
    if observer is None:
        raise ObserverUnavailable("the observer is not running (LITEFLEET_OBSERVER=false, or no S3 storage)")
    return observer


def _stamp(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def freshness_json(source: Source) -> dict[str, Any]:
    """Where an observer answer came from and how fresh it is."""
    fresh = source.freshness
    return {
        "kind": source.kind.value,
        "tenant": source.tenant,
        "agent": source.agent,
        "generation": source.generation,
        "txid": fresh.txid,
        "as_of": _stamp(fresh.as_of),
        "applied_at": _stamp(fresh.applied_at),
        "replica_txid": fresh.replica_txid,
        "seconds_behind": fresh.seconds_behind,
        "checked_at": _stamp(fresh.checked_at),
    }


def _load(text: str | None) -> Any:
    """A JSON value kept as text in the agent's DB; text that does not parse is returned as it is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error(error: WorkflowError | None) -> dict[str, str] | None:
    return None if error is None else {"type": error.type, "message": error.message}


def workflow_json(row: WorkflowInfo) -> dict[str, Any]:
    """A workflow as an agent's own `/v1/workflows/{id}` shows it (same fields, same units)."""
    inputs = row.inputs if isinstance(row.inputs, dict) else {}
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "args": inputs.get("args", []),
        "kwargs": inputs.get("kwargs", {}),
        "result": row.result,
        "error": _error(row.error),
        "parent_id": row.parent_id,
        "queue": row.queue,
        "bundle_version": row.bundle_version,
        "blocked_reason": row.blocked_reason,
        "forked_from": row.forked_from,
        "created_at": row.created_at.timestamp(),
        "updated_at": row.updated_at.timestamp(),
    }


def observed_workflow(detail: WorkflowDetail) -> dict[str, Any]:
    return {
        **workflow_json(detail.workflow),
        "agent": detail.source.agent,
        "source": "observer",
        "freshness": freshness_json(detail.source),
    }


def workflow_detail_json(detail: WorkflowDetail) -> dict[str, Any]:
    """A workflow with its steps, events and errors (the log entries that carry one)."""
    return {
        **observed_workflow(detail),
        "steps": [
            {
                "seq": s.seq,
                "kind": s.kind,
                "name": s.name,
                "output": _load(s.output_json),
                "error": _error(s.error),
                "attempts": s.attempts,
                "started_at": _stamp(s.started_at),
                "finished_at": _stamp(s.finished_at),
            }
            for s in detail.steps
        ],
        "events": [{"key": e.key, "value": _load(e.value_json), "at": _stamp(e.at)} for e in detail.events],
        "errors": [
            {"lsn": e.lsn, "seq": e.seq, "kind": e.kind, "name": e.name, "error": _error(e.error), "at": _stamp(e.at)}
            for e in detail.errors
        ],
    }


def agent_listing(listing: WorkflowList) -> dict[str, Any]:
    return {
        "agent": listing.source.agent,
        "source": "observer",
        "freshness": freshness_json(listing.source),
        "counts": listing.counts,
        "workflows": [{**workflow_json(w), "agent": listing.source.agent} for w in listing.workflows],
    }


def history(
    session: Session,
    observer: Observer | None,
    tenant: str,
    at: dt.datetime,
    agent: int | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """The tenant's workflows by status as of `at`, per agent ordinal, from point-in-time restores of the
    generation that was writing then. Ordinals with no state at `at` are listed under `unavailable` (with one
    `agent` asked, that is an error: 404 no_state_at / replica_not_found)."""
    found = require(observer)
    find_tenant(session, tenant)
    at = at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    agents: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []
    totals: dict[str, int] = {}
    for ordinal in [agent] if agent is not None else found.agents(tenant):
        try:
            listing = found.workflows(tenant, ordinal, at=at, limit=limit)
        except (NoStateAt, ReplicaNotFound) as exc:
            if agent is not None:
                raise
            unavailable.append({"agent": ordinal, "code": exc.code, "reason": str(exc)})
            continue
        agents.append(agent_listing(listing))
        for status, count in listing.counts.items():
            totals[status] = totals.get(status, 0) + count
    return {"tenant": tenant, "at": at.isoformat(), "counts": totals, "agents": agents, "unavailable": unavailable}


def history_workflow(
    session: Session,
    observer: Observer | None,
    tenant: str,
    workflow_id: str,
    at: dt.datetime | None,
    agent: int | None,
) -> dict[str, Any]:
    """One workflow in full (steps, events, errors) from the observer, as of `at` (None: the newest state)."""
    found = require(observer)
    find_tenant(session, tenant)
    if agent is not None:
        return workflow_detail_json(found.workflow(tenant, agent, workflow_id, at=at))
    if at is None:
        detail = found.find_workflow(tenant, workflow_id)
        if detail is not None:
            return workflow_detail_json(detail)
    else:
        for ordinal in found.agents(tenant):
            try:
                return workflow_detail_json(found.workflow(tenant, ordinal, workflow_id, at=at))
            except ObserverError:
                continue
    raise WorkflowNotFound(f"no replica of {tenant}'s agents holds workflow {workflow_id!r}")


def problems(observer: Observer | None, limit_per_agent: int = 100) -> dict[str, Any]:
    """Workflows in ERROR or BLOCKED across every followed agent of the fleet."""
    report = require(observer).problems(PROBLEM_STATUSES, limit_per_agent)
    return {
        "statuses": list(PROBLEM_STATUSES),
        "agents_checked": report.agents_checked,
        "workflows": [
            {
                **workflow_json(item.workflow),
                "tenant": item.source.tenant,
                "agent": item.source.agent,
                "source": "observer",
                "freshness": freshness_json(item.source),
            }
            for item in report.workflows
        ],
        "unavailable": [
            {"tenant": u.ref.tenant, "agent": u.ref.agent, "generation": u.ref.generation, "reason": u.reason}
            for u in report.unavailable
        ],
    }


@dataclass
class TenantWorkflows:
    """A tenant's workflows by status, summed over its running agents' followed copies, with the ERROR and
    BLOCKED ones listed (newest first). Agents without a readable copy are named in `unavailable`, never counted
    as empty."""

    counts: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[dict[str, Any]] = field(default_factory=list)


def tenant_workflows(
    observer: Observer | None, tenant: str, agents: Iterable[AgentPublic], limit_per_agent: int = 50
) -> TenantWorkflows:
    """From the followed copies only (a dashboard page never waits for a restore). Read-only."""
    found = TenantWorkflows()
    if observer is None:
        found.unavailable.append({"agent": None, "reason": "the observer is not running"})
        return found
    for agent in agents:
        if agent.state != AgentState.running or agent.generation < 1:
            continue
        state = observer.follow_state(tenant, agent.ordinal, agent.generation)
        if state is None or not state.ready:  # no copy to read yet: never a restore while a page renders
            why = "not followed yet" if state is None else "its copy is not restored yet"
            found.unavailable.append({"agent": agent.ordinal, "reason": f"gen {agent.generation} {why}"})
            continue
        try:
            listing = observer.workflows(
                tenant, agent.ordinal, agent.generation, status=PROBLEM_STATUSES, limit=limit_per_agent
            )
        except ObserverError as exc:
            found.unavailable.append({"agent": agent.ordinal, "reason": str(exc)})
            continue
        for status, count in listing.counts.items():
            found.counts[status] = found.counts.get(status, 0) + count
        found.sources.append(freshness_json(listing.source))
        found.problems.extend({**workflow_json(w), "agent": agent.ordinal} for w in listing.workflows)
    found.problems.sort(key=lambda w: w["updated_at"], reverse=True)
    return found
