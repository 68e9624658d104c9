"""Requests held while an agent is moved: the router waits for the agent's new incarnation instead of answering an
error, bounded in count (`max_held_requests` per control plane) and time (`hold_timeout` per request); past either
bound the caller gets `503 agent_moving` with `Retry-After`.

Only a move is waited out: an agent that is not running while an unfinished evacuation, drain or fail-over moves
it (its id in the operation's plan; a queued one that has no plan yet: an evacuation of its tenant, a drain or
fail-over of its node). An agent that is simply down (a node dead with no fail-over queued, a failed rollback, a
hibernated tenant) is not waited for: the request gets its error after one short read of the fleet DB.

A held request holds no DB connection and no worker thread: one poller task reads the agents of every tenant with
held requests (and the unfinished moves) in one short session per `hold_poll_interval`, and wakes the requests of
each tenant with what it read; each request decides for itself whether what it waits for happened."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import (
    UNFINISHED_STATES,
    Agent,
    AgentState,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
)
from control_plane.errors import AgentMoving
from control_plane.metrics import HELD_SECONDS
from control_plane.services.polling import Poller

MOVE_KINDS = (OperationKind.evacuate, OperationKind.drain, OperationKind.failover)

Incarnation = tuple[int, int]  # (ordinal, generation)


@dataclass(frozen=True)
class TenantView:
    """What the fleet DB says of one tenant's agents now."""

    running: frozenset[Incarnation]
    moving: frozenset[int]  # ordinals an unfinished move operation is moving (not running now)


def _moved_by(agent: Agent, op: Operation) -> bool:
    if agent.id in op.params.get("plan", {}):
        return True
    if op.state != OperationState.pending:
        return False  # a running move planned every agent it moves before stopping any
    if op.kind == OperationKind.evacuate:
        return op.tenant == agent.tenant
    return op.node is not None and op.node == agent.node


def read_views(engine: Engine, tenants: Iterable[str]) -> dict[str, TenantView]:
    """The views of `tenants`, in one short session (three queries, whatever the number of tenants)."""
    names = sorted(set(tenants))
    with Session(engine) as session:
        agents = session.exec(select(Agent).where(col(Agent.tenant).in_(names))).all()
        desired = dict(session.exec(select(Tenant.name, Tenant.agents).where(col(Tenant.name).in_(names))).all())
        moves = session.exec(
            select(Operation)
            .where(col(Operation.state).in_(UNFINISHED_STATES))
            .where(col(Operation.kind).in_(MOVE_KINDS))
        ).all()
    running: dict[str, set[Incarnation]] = {name: set() for name in names}
    moving: dict[str, set[int]] = {name: set() for name in names}
    for agent in agents:
        if agent.state == AgentState.running:
            running[agent.tenant].add((agent.ordinal, agent.generation))
        elif agent.ordinal < desired.get(agent.tenant, 0) and any(_moved_by(agent, op) for op in moves):
            moving[agent.tenant].add(agent.ordinal)
    return {name: TenantView(frozenset(running[name]), frozenset(moving[name])) for name in names}


class Holds:
    def __init__(self, engine: Engine, *, limit: int, timeout: float, interval: float = 0.1) -> None:
        self.engine = engine
        self.limit = limit
        self.timeout = timeout
        self.interval = interval
        self._held = 0  # only touched on the event loop
        # a held request has just read its view: the poller's first read waits one interval
        self._poller: Poller[str, TenantView] = Poller(
            "holds", lambda tenants: read_views(engine, tenants), interval, first_at_once=False
        )

    @property
    def held(self) -> int:
        return self._held

    @contextlib.asynccontextmanager
    async def request(self, tenant: str) -> AsyncIterator[Hold]:
        """One routed request's hold: it takes one of the `limit` places only when it first waits, and gives it
        back when the request ends."""
        hold = Hold(self, tenant)
        try:
            yield hold
        finally:
            if hold.holding:
                self._held -= 1

    def _take(self, tenant: str) -> None:
        if self._held >= self.limit:
            raise AgentMoving(
                f"an agent of {tenant} is being moved and {self.limit} requests are already held on this control "
                "plane: retry shortly"
            )
        self._held += 1

    async def next_view(self, tenant: str, timeout: float) -> TenantView | None:
        """The next view of `tenant` the poller reads, or None after `timeout` seconds."""
        return await self._poller.wait(tenant, timeout)


class Hold:
    """The hold of one request: one deadline (`timeout` after it first waits) however often it waits."""

    def __init__(self, holds: Holds, tenant: str) -> None:
        self.holds, self.tenant = holds, tenant
        self.holding = False
        self.deadline: float | None = None
        self.waited = 0.0

    async def until_back(self, tried: Iterable[Incarnation], ordinals: set[int] | None, cause: Exception) -> None:
        """Return once an incarnation the request has not tried yet runs (of one of `ordinals`; None: any of the
        tenant's agents). Raises `cause` when no agent it could wait for is being moved (nothing is coming back),
        AgentMoving past the count or time bound."""
        seen = set(tried)
        view: TenantView | None = (await asyncio.to_thread(read_views, self.holds.engine, [self.tenant]))[self.tenant]
        started = time.monotonic()
        outcome = "other"
        try:
            while True:
                if view is not None:
                    fresh = {i for i in view.running - seen if ordinals is None or i[0] in ordinals}
                    if fresh:
                        outcome = "delivered"
                        return
                    if not (view.moving if ordinals is None else view.moving & ordinals):
                        raise cause
                if not self.holding:
                    try:
                        self.holds._take(self.tenant)
                    except AgentMoving:
                        HELD_SECONDS.labels("full").observe(0)
                        raise
                    self.holding = True
                    self.deadline = time.monotonic() + self.holds.timeout
                assert self.deadline is not None
                left = self.deadline - time.monotonic()
                if left <= 0:
                    outcome = "timed_out"
                    raise AgentMoving(
                        f"an agent of {self.tenant} is still being moved after {self.holds.timeout:g}s: retry shortly"
                    )
                view = await self.holds.next_view(self.tenant, left)
        finally:
            waited = time.monotonic() - started
            self.waited += waited
            if self.holding:
                HELD_SECONDS.labels(outcome).observe(waited)
