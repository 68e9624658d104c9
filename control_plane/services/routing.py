"""Workflow routing: a workflow id lives on one of the tenant's running agents, found by its hash first. What no
running agent holds (retired ordinals, a hibernated tenant, an agent being moved or not answering) is answered
from the observer's read-only copies, saying so (`source`, `freshness`).

Every call carries the agent's own token (its row's `agent_token`), and every id or name that goes into an agent's
URL is quoted as one path segment: `../../v1/workflows?limit=1000&` stays an (unknown) id, not another route.

One frozen agent never stalls its tenant: calls run on the event loop through one pooled client with short
timeouts of their own, lookups ask every agent at once (the first that holds the id answers), and each
incarnation has a circuit breaker (services/breakers.py): after a few failures in a row it is skipped for a
cool-down, then probed once in the background. A new workflow goes to the first agent in its id's hash order
whose breaker is closed, and to the next one when that agent cannot even be connected to (nothing was sent).
Trade-off: a client-given id first started on an agent that no longer answers may start again on another one
(availability first); a generated id cannot.

While one of the tenant's agents is being moved (evacuation, drain, fail-over), a request no running agent could
take or answer is held until the moved agent's new incarnation runs, then delivered to it (services/holds.py;
bounded, `503 agent_moving` with `Retry-After` past the bounds): a client sees added latency, not errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import Agent, AgentState
from control_plane.errors import (
    AgentMoving,
    AgentUnavailable,
    FleetError,
    InvalidRequest,
    NoAgentRunning,
    WorkflowNotFound,
)
from control_plane.observer import NoStateAt, ReplicaNotFound
from control_plane.services.breakers import Breakers
from control_plane.services.holds import Hold, Holds, Incarnation
from control_plane.services.observed import agent_listing, observed_workflow
from control_plane.services.tenants import find_tenant

if TYPE_CHECKING:
    from control_plane.observer import Observer

log = structlog.get_logger("control_plane.routing")

CONNECT_TIMEOUT = 1.0  # an agent that does not accept a connection within this is not answering
LOOKUP_TIMEOUT = 3.0  # one workflow's status (plus its `wait`, when long-polling)
START_TIMEOUT = 10.0  # starting a workflow (an agent answers once the start is durable)
LIST_TIMEOUT = 5.0

BREAKERS = Breakers(threshold=3, cooldown=5.0)  # this process's view of each incarnation
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _client() -> httpx.AsyncClient:
    """One pooled client per event loop (a client's connections belong to the loop that opened them)."""
    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
        client = _CLIENTS[loop] = httpx.AsyncClient(limits=limits)
    return client


def _timeout(read: float) -> httpx.Timeout:
    return httpx.Timeout(read, connect=CONNECT_TIMEOUT)


def _key(agent: Agent) -> str:
    return f"{agent.id}@{agent.generation}"


_TRIALS: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps only weak references)


def _usable(agent: Agent) -> bool:
    """Whether to send `agent` a request now: yes while its breaker is closed. Past an open breaker's
    cool-down a probe of its own (`/healthz`) is the trial, in the background: a user's request never waits on
    an agent that was not answering."""
    verdict = BREAKERS.check(_key(agent))
    if verdict == "trial":
        task = asyncio.ensure_future(_trial(agent))
        _TRIALS.add(task)
        task.add_done_callback(_TRIALS.discard)
    return verdict == "call"


async def _trial(agent: Agent) -> None:
    with contextlib.suppress(httpx.HTTPError):
        await _call(agent, "GET", "/healthz", LOOKUP_TIMEOUT)


def _no_agent_running(tenant: str) -> NoAgentRunning:
    return NoAgentRunning(f"tenant {tenant} has no running agent (hibernated, or still starting)")


def _running_agents(engine: Engine, name: str, *, required: bool = True) -> list[Agent]:
    """The tenant's running agents, read in one short session (none is held while agents are asked)."""
    with Session(engine) as session:
        find_tenant(session, name)
        agents = session.exec(
            select(Agent)
            .where(Agent.tenant == name)
            .where(Agent.state == AgentState.running)
            .order_by(col(Agent.ordinal))
        ).all()
        if not agents and required:
            raise _no_agent_running(name)
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


async def _call(agent: Agent, method: str, path: str, read_timeout: float, **kwargs: Any) -> httpx.Response:
    """One call to `agent`, counted by its breaker: an answer (any status) is a success, no answer a failure."""
    try:
        answer = await _client().request(
            method, f"{agent.url}{path}", headers=_headers(agent), timeout=_timeout(read_timeout), **kwargs
        )
    except httpx.HTTPError:
        BREAKERS.failed(_key(agent))
        raise
    BREAKERS.succeeded(_key(agent))
    return answer


async def _first_holder(
    agents: list[Agent], workflow_id: str, wait: float
) -> tuple[Agent | None, dict[str, Any], bool]:
    """Ask `agents` at once for `workflow_id`; the first that answers 200 wins (the others are cancelled): (that
    agent, its answer, _). Else (None, {}, whether some agent did not answer or was skipped by its breaker)."""
    silent = False
    asked: dict[asyncio.Task[httpx.Response], Agent] = {}
    for agent in agents:
        if not _usable(agent):
            silent = True
            continue
        call: Awaitable[httpx.Response] = _call(
            agent,
            "GET",
            f"/v1/workflows/{_segment(workflow_id)}",
            LOOKUP_TIMEOUT + wait,
            params={"wait": wait} if wait else None,
        )
        asked[asyncio.ensure_future(call)] = agent
    pending = set(asked)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: agents.index(asked[t])):
                if task.exception() is not None:
                    silent = True
                    continue
                found = task.result()
                if found.status_code == 200:
                    try:
                        return asked[task], found.json(), silent
                    except ValueError:
                        silent = True
    finally:
        for task in pending:
            task.cancel()
    return None, {}, silent


@contextlib.asynccontextmanager
async def _holding(holds: Holds | None, tenant: str) -> AsyncIterator[Hold | None]:
    if holds is None:
        yield None
        return
    async with holds.request(tenant) as hold:
        yield hold
    if hold.waited:
        log.info("workflow.held", tenant=tenant, seconds=round(hold.waited, 3))


class _NotTaken(Exception):
    """No agent took a start: `error` is the caller's answer, unless a hold waits out a move and tries again.
    `tried`: the running incarnations when it was tried; `sent_to`: the agent that took the start without
    answering (it may run there)."""

    def __init__(self, error: FleetError, tried: set[Incarnation], sent_to: int | None = None) -> None:
        super().__init__(str(error))
        self.error, self.tried, self.sent_to = error, tried, sent_to


class _Settled(Exception):
    """Nothing the request could wait for is being moved."""


def _refused(answer: httpx.Response) -> bool:
    """The agent refused the start before starting anything (`503 draining`: it is stopping)."""
    if answer.status_code != 503:
        return False
    try:
        return bool(answer.json().get("code") == "draining")
    except (ValueError, AttributeError):
        return False


async def start_workflow(
    engine: Engine, tenant: str, name: str, body: dict[str, Any], holds: Holds | None = None
) -> tuple[int, dict[str, Any]]:
    """Start on one agent, chosen by the workflow id's hash among those whose breaker lets calls through. With a
    given id that already exists on an agent that answers, that agent's answer is returned (idempotent start by
    id, as on one agent); a generated id is new by construction and asks nobody first.

    With `holds`, a start no agent took while one of the tenant's agents is being moved waits for the moved
    agent's new incarnation and is tried again (services/holds.py). A start that an agent took without answering
    may have started there: from then on every agent is asked for its id first and it is only ever sent to that
    same agent again (its start by id is idempotent), so it never starts twice, even with a generated id."""
    given = body.get("id")
    workflow_id = given or secrets.token_hex(8)
    if not isinstance(workflow_id, str):
        raise InvalidRequest("id must be a string")
    body = {**body, "id": workflow_id}
    look, pinned = bool(given), None
    async with _holding(holds, tenant) as hold:
        while True:
            try:
                return await _start_once(engine, tenant, name, body, look=look, pinned=pinned)
            except _NotTaken as exc:
                if hold is None:
                    raise exc.error from None
                if exc.sent_to is not None:
                    look, pinned = True, exc.sent_to
                await hold.until_back(exc.tried, None if pinned is None else {pinned}, exc.error)


async def _start_once(
    engine: Engine, tenant: str, name: str, body: dict[str, Any], *, look: bool, pinned: int | None
) -> tuple[int, dict[str, Any]]:
    """One attempt: ask for the id first when `look` (the hash's agent is asked by the start itself, unless the
    start is `pinned` to an agent), then send it to the first agent that takes it (only `pinned` when set)."""
    workflow_id = str(body["id"])
    agents = await asyncio.to_thread(_running_agents, engine, tenant, required=False)
    incarnations = {(agent.ordinal, agent.generation) for agent in agents}
    if not agents:
        raise _NotTaken(_no_agent_running(tenant), set())
    ordered = _home(agents, workflow_id)
    if look:
        holder, found, _ = await _first_holder(ordered if pinned is not None else ordered[1:], workflow_id, 0)
        if holder is not None:
            return 200, {**found, "agent": holder.ordinal}
    targets = ordered if pinned is None else [agent for agent in ordered if agent.ordinal == pinned]
    if not targets:
        raise _NotTaken(
            AgentUnavailable(
                f"agent {pinned} of {tenant} took the start of {workflow_id!r} without answering and is not running "
                "now; retry with the same id"
            ),
            incarnations,
            pinned,
        )
    tried: list[str] = []
    for agent in targets:
        if not _usable(agent):
            tried.append(f"{agent.ordinal} (skipped: not answering lately)")
            continue
        try:
            answer = await _call(agent, "POST", f"/v1/workflows/{_segment(name)}", START_TIMEOUT, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            tried.append(f"{agent.ordinal} (no connection)")
            continue  # nothing was sent: the next agent may take it
        except httpx.HTTPError as exc:
            # sent, but no answer: it may have started there; retrying with the same id finds it or starts it
            raise _NotTaken(
                AgentUnavailable(
                    f"agent {agent.ordinal} of {tenant} took the start of {workflow_id!r} but did not answer "
                    f"({type(exc).__name__}); retry with the same id"
                ),
                incarnations,
                agent.ordinal,
            ) from None
        if _refused(answer):
            tried.append(f"{agent.ordinal} (draining)")
            continue
        try:
            return answer.status_code, {**answer.json(), "agent": agent.ordinal}
        except ValueError:
            raise AgentUnavailable(f"agent {agent.ordinal} of {tenant} answered something that is not JSON") from None
    raise _NotTaken(
        AgentUnavailable(f"no agent of {tenant} takes workflows now: {', '.join(tried)}"), incarnations, pinned
    )


async def find_workflow(
    engine: Engine,
    tenant: str,
    workflow_id: str,
    wait: float,
    observer: Observer | None = None,
    holds: Holds | None = None,
) -> dict[str, Any]:
    """Ask the running agents at once (the id's hash's agent first when several answer); then, when none holds
    it, the observer's copies of every ordinal with a replica. Without an observer a tenant with no running agent
    is `no_agent_running`, and agents that did not answer make it `agent_unavailable`, not a false not-found.

    With `holds`, while one of the tenant's agents is being moved, an id no running agent holds is asked again
    of the moved agent's new incarnation (it may be there) before the observer or a not-found answers; past the
    hold's bounds the observer answers when there is one (`agent_moving` when not)."""
    async with _holding(holds, tenant) as hold:
        while True:
            running = await asyncio.to_thread(
                _running_agents, engine, tenant, required=observer is None and hold is None
            )
            ordered = _home(running, workflow_id) if running else []
            holder, found, unreachable = await _first_holder(ordered, workflow_id, wait)
            if holder is not None:
                return {**found, "agent": holder.ordinal, "source": "agent"}
            if hold is None:
                break
            try:
                await hold.until_back({(agent.ordinal, agent.generation) for agent in running}, None, _Settled())
            except _Settled:
                break
            except AgentMoving:
                if observer is None:
                    raise
                break  # past the bounds the observer's copy answers (saying how fresh it is), as without holds
    if observer is not None:
        detail = await asyncio.to_thread(observer.find_workflow, tenant, workflow_id)
        if detail is not None:
            return observed_workflow(detail)
        silent = " (some agents did not answer)" if unreachable else ""
        raise WorkflowNotFound(f"no agent of {tenant} holds workflow {workflow_id!r}, nor does any replica{silent}")
    if not running:
        raise _no_agent_running(tenant)
    if unreachable:
        raise AgentUnavailable(f"no answering agent of {tenant} holds {workflow_id!r}; some agents did not answer")
    raise WorkflowNotFound(f"no agent of {tenant} holds workflow {workflow_id!r}")


async def _listing(agent: Agent, params: dict[str, Any]) -> dict[str, Any]:
    if not _usable(agent):
        raise AgentUnavailable("skipped: not answering lately")
    answer = await _call(agent, "GET", "/v1/workflows", LIST_TIMEOUT, params=params)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


async def list_workflows(
    engine: Engine, tenant: str, status: str | None, limit: int, observer: Observer | None = None
) -> dict[str, Any]:
    """The tenant's workflows, per agent ordinal: running agents answer themselves (all asked at once,
    `source: agent`); ordinals with a replica but no running agent (retired, hibernated, being moved) or a running
    agent that does not answer come from the observer (`source: observer` with `freshness`). Ordinals nobody can
    answer for are listed under `unavailable`, never silently left out."""
    running = await asyncio.to_thread(_running_agents, engine, tenant, required=observer is None)
    agents: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []
    missing: list[int] = []
    params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
    answers = await asyncio.gather(*(_listing(agent, params) for agent in running), return_exceptions=True)
    for agent, body in zip(running, answers, strict=True):
        if isinstance(body, BaseException):
            if not isinstance(body, (httpx.HTTPError, ValueError, AgentUnavailable)):
                raise body
            if observer is None:
                raise AgentUnavailable(f"agent {agent.ordinal} of {tenant} did not answer: {body}")
            missing.append(agent.ordinal)
            unavailable.append({"agent": agent.ordinal, "source": "agent", "reason": f"agent did not answer: {body}"})
            continue
        workflows = [{**w, "agent": agent.ordinal} for w in body.get("workflows", [])]
        agents.append(
            {"agent": agent.ordinal, "source": "agent", "counts": body.get("counts", {}), "workflows": workflows}
        )
    if observer is not None:
        served = {agent.ordinal for agent in running} - set(missing)
        for ordinal in sorted(set(observer.agents(tenant)) - served):
            try:
                listing = await asyncio.to_thread(observer.workflows, tenant, ordinal, status=status, limit=limit)
                agents.append(agent_listing(listing))
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
