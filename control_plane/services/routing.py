"""Workflow routing: a workflow id lives on one of the tenant's running agents, found by its hash first.

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
from control_plane.services.tenants import find_tenant


def _running_agents(session: Session, name: str) -> list[Agent]:
    find_tenant(session, name)
    agents = session.exec(
        select(Agent).where(Agent.tenant == name).where(Agent.state == AgentState.running).order_by(col(Agent.ordinal))
    ).all()
    if not agents:
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


def find_workflow(session: Session, tenant: str, workflow_id: str, wait: float) -> dict[str, Any]:
    for agent in _home(_running_agents(session, tenant), workflow_id):
        found = httpx.get(
            f"{agent.url}/v1/workflows/{_segment(workflow_id)}",
            params={"wait": wait} if wait else None,
            headers=_headers(agent),
            timeout=wait + 10,
        )
        if found.status_code == 200:
            return {**found.json(), "agent": agent.ordinal}
    raise WorkflowNotFound(f"no agent of {tenant} holds workflow {workflow_id!r}")
