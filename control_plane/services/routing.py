"""Workflow routing: a workflow id lives on one of the tenant's running agents, found by its hash first. What no
running agent holds (retired ordinals, a hibernated tenant, an agent being moved or not answering) is answered
from the observer's read-only copies, saying so (`source`, `freshness`).

Every call carries the agent's own token (its row's `agent_token`), and every id or name that goes into an agent's
URL is quoted as one path segment: `../../v1/workflows?limit=1000&` stays an (unknown) id, not another route."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any
from urllib.parse import quote

import httpx
from sqlmodel import Session, col, select

from control_plane.db.models import Agent, AgentState
from control_plane.errors import InvalidRequest, NoAgentRunning, WorkflowNotFound
from control_plane.observer import NoStateAt, Observer, ReplicaNotFound
from control_plane.services.observed import agent_listing, observed_workflow
from control_plane.services.tenants import find_tenant


def _running_agents(session: Session, name: str, *, required: bool = True) -> list[Agent]:
    find_tenant(session, name)
    agents = session.exec(
        select(Agent).where(Agent.tenant == name).where(Agent.state == AgentState.running).order_by(col(Agent.ordinal))
    ).all()
    if not agents and required:
        raise NoAgentRunning(f"tenant {name} has no running agent (hibernated, or still starting)")
    return list(agents)


def _headers(agent: Agent) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent.agent_token or ''}"}


def _segment(value: str) -> str:
    """`value` as one URL path segment (no `/`, `?`, `#` or `..` that could reach another route)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _home(agents: list[Agent], workflow_id: str) -> list[Agent]:
    """The agents to ask for a workflow id: its hash's agent first, then the others (it may have been started
    before a scale changed the count)."""
    first = int(hashlib.sha256(workflow_id.encode()).hexdigest(), 16) % len(agents)
    return agents[first:] + agents[:first]


def start_workflow(session: Session, tenant: str, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Start on one agent, chosen by the workflow id's hash. With an id that already exists anywhere, that agent's
    answer is returned (idempotent start by id, as on one agent)."""
    agents = _running_agents(session, tenant)
    workflow_id = body.get("id") or secrets.token_hex(8)
    if not isinstance(workflow_id, str):
        raise InvalidRequest("id must be a string")
    body = {**body, "id": workflow_id}
    ordered = _home(agents, workflow_id)
    for agent in ordered[1:]:
        found = httpx.get(f"{agent.url}/v1/workflows/{_segment(workflow_id)}", headers=_headers(agent), timeout=10)
        if found.status_code == 200:
            return 200, {**found.json(), "agent": agent.ordinal}
    home = ordered[0]
    answer = httpx.post(f"{home.url}/v1/workflows/{_segment(name)}", json=body, headers=_headers(home), timeout=30)
    return answer.status_code, {**answer.json(), "agent": ordered[0].ordinal}


def find_workflow(
    session: Session, tenant: str, workflow_id: str, wait: float, observer: Observer | None = None
) -> dict[str, Any]:
    """Ask the running agents (the id's hash's agent first); then, when none holds it, the observer's copies of
    every ordinal with a replica. Without an observer a tenant with no running agent is `no_agent_running`."""
    running = _running_agents(session, tenant, required=observer is None)
    unreachable = False
    for agent in _home(running, workflow_id) if running else []:
        try:
            found = httpx.get(
                f"{agent.url}/v1/workflows/{_segment(workflow_id)}",
                params={"wait": wait} if wait else None,
                headers=_headers(agent),
                timeout=wait + 10,
            )
        except httpx.HTTPError:
            if observer is None:
                raise
            unreachable = True
            continue
        if found.status_code == 200:
            return {**found.json(), "agent": agent.ordinal, "source": "agent"}
    if observer is not None:
        detail = observer.find_workflow(tenant, workflow_id)
        if detail is not None:
            return observed_workflow(detail)
        silent = " (some agents did not answer)" if unreachable else ""
        raise WorkflowNotFound(f"no agent of {tenant} holds workflow {workflow_id!r}, nor does any replica{silent}")
    raise WorkflowNotFound(f"no agent of {tenant} holds workflow {workflow_id!r}")


def list_workflows(
    session: Session, tenant: str, status: str | None, limit: int, observer: Observer | None = None
) -> dict[str, Any]:
    """The tenant's workflows, per agent ordinal: running agents answer themselves (`source: agent`); ordinals
    with a replica but no running agent (retired, hibernated, being moved) or a running agent that does not
    answer come from the observer (`source: observer` with `freshness`). Ordinals nobody can answer for are
    listed under `unavailable`, never silently left out."""
    running = _running_agents(session, tenant, required=observer is None)
    agents: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []
    missing: list[int] = []
    params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
    for agent in running:
        try:
            answer = httpx.get(f"{agent.url}/v1/workflows", params=params, headers=_headers(agent), timeout=10)
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            if observer is None:
                raise
            missing.append(agent.ordinal)
            unavailable.append({"agent": agent.ordinal, "source": "agent", "reason": f"agent did not answer: {exc}"})
            continue
        workflows = [{**w, "agent": agent.ordinal} for w in body.get("workflows", [])]
        agents.append(
            {"agent": agent.ordinal, "source": "agent", "counts": body.get("counts", {}), "workflows": workflows}
        )
    if observer is not None:
        served = {agent.ordinal for agent in running} - set(missing)
        for ordinal in sorted(set(observer.agents(tenant)) - served):
            try:
                agents.append(agent_listing(observer.workflows(tenant, ordinal, status=status, limit=limit)))
            except (NoStateAt, ReplicaNotFound) as exc:
                unavailable.append({"agent": ordinal, "source": "observer", "reason": str(exc)})
            else:
                unavailable = [u for u in unavailable if u["agent"] != ordinal]
    counts: dict[str, int] = {}
    for entry in agents:
        for key, value in entry["counts"].items():
            counts[key] = counts.get(key, 0) + int(value)
    workflows = sorted((w for entry in agents for w in entry["workflows"]), key=lambda w: -float(w["created_at"]))
    return {
        "tenant": tenant,
        "counts": counts,
        "workflows": workflows[:limit],
        "agents": [{k: v for k, v in entry.items() if k != "workflows"} for entry in agents],
        "unavailable": unavailable,
    }
