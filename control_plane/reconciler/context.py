"""What an operation's code sees: its request, its recorded plans and marks, and a step log; every write lands
only while the operation's lease is still ours.

The operation's row is the only state its runner keeps between steps (a re-run after a crash reads it back).
All of it is changed through the methods here, each of which updates the copy and commits it under one lock:
agents of one operation move in parallel, and no snapshot may be committed after a later one."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Event, Operation, OperationKind
from control_plane.errors import NoCapacityLeft
from control_plane.reconciler.claims import LostLease, Stopping
from control_plane.reconciler.planning import Plan, from_json, to_json

log = structlog.get_logger("control_plane.reconciler")

PLAN_ATTEMPTS = 5  # placements of one agent that may each lose its place to another operation's plan


class OpContext:
    def __init__(self, engine: Engine, op: Operation, token: str, stopping: Callable[[], bool] = lambda: False) -> None:
        self.engine = engine
        self._stopping = stopping
        self.id = op.id
        self.kind: OperationKind = op.kind
        self.tenant = op.tenant
        self.node = op.node
        self.params: dict[str, Any] = dict(op.params)  # the request, plus what the runner recorded (below)
        self.result: dict[str, Any] = dict(op.result)
        self.token = token
        self._lock = threading.RLock()
        self._thread = threading.local()  # which tenant this thread's lines are about (`about`)
        self.log = log.bind(op=op.id, kind=op.kind.value, tenant=op.tenant, node=op.node)

    # -- the step log -------------------------------------------------------------------------------------------

    @contextmanager
    def about(self, tenant: str) -> Iterator[None]:
        """Lines this thread logs inside the block name `tenant`: a node's drain or fail-over moves many tenants'
        agents, each in a thread of its own, and a line (or an event) saying `agent 0` would not say whose."""
        outer = getattr(self._thread, "tenant", None)
        self._thread.tenant = tenant
        try:
            yield
        finally:
            self._thread.tenant = outer

    def step(self, name: str, message: str = "", *, agent: int | None = None, **detail: Any) -> None:
        """Append a line to the operation's log (and an event), e.g. `ctx.step("agent.started", agent=0)`.
        Lines of agents moving in parallel are appended one at a time: none is lost."""
        entry = {"at": round(time.time(), 3), "step": name, "message": message, **detail}
        tenant = self.tenant or getattr(self._thread, "tenant", None)
        if tenant is not None and self.tenant is None:
            entry["tenant"] = tenant
        if agent is not None:
            entry["agent"] = agent
        self.log.info(name, message=message, agent=agent, **({"tenant": tenant} | detail))
        with self._lock, Session(self.engine) as session:
            op = self._owned(session)
            op.steps = [*op.steps, entry]
            op.updated_at = time.time()
            session.add(op)
            session.add(
                Event(
                    kind=name,
                    tenant=tenant,
                    node=detail.get("node") or self.node,
                    agent=agent,
                    operation=self.id,
                    message=message,
                )
            )
            session.commit()

    # -- what a re-run must find ----------------------------------------------------------------------------------

    def plan(
        self, agent_id: str, make: Callable[[], Plan], reserve: Callable[[Session, Plan], bool] | None = None
    ) -> Plan:
        """The plan recorded for `agent_id`, or `make()`'s, recorded before it is returned (first one wins).

        With `reserve`, the plan is recorded in a transaction that `reserve` opens by holding the plan's place
        (`placement.reserve`). When it cannot (another operation took the place after `make()` read the loads)
        nothing is recorded and `make()` places again, at most PLAN_ATTEMPTS times."""
        recorded = self.plan_of(agent_id)
        if recorded is not None:
            return recorded
        for _ in range(PLAN_ATTEMPTS):
            made = make()

            def record(made: Plan = made) -> Any:
                return self.params.setdefault("plan", {}).setdefault(agent_id, to_json(made))

            def hold(session: Session, made: Plan = made) -> bool:
                return reserve is None or reserve(session, made)

            answer = self._update(record, first=hold)
            if answer is not None:
                return from_json(answer)
        raise NoCapacityLeft(
            f"no place could be reserved for agent {agent_id} in {PLAN_ATTEMPTS} tries: each node chosen was taken by "
            "another operation, stopped being ready, or it or the agent was removed meanwhile"
        )

    def plan_of(self, agent_id: str) -> Plan | None:
        with self._lock:
            recorded = self.params.get("plan", {}).get(agent_id)
        return None if recorded is None else from_json(recorded)

    def planned(self) -> set[str]:
        with self._lock:
            return set(self.params.get("plan", {}))

    def remember(self, key: str, value: Any, agent_id: str | None = None) -> Any:
        """Record `value` under `key` (per agent when `agent_id` is given) unless something is recorded there
        already, and return what is recorded: the first run's `stopped_at` survives a re-run."""
        if agent_id is None:
            return self._update(lambda: self.params.setdefault(key, value))
        return self._update(lambda: self.params.setdefault(key, {}).setdefault(agent_id, value))

    def recalled(self, key: str, agent_id: str) -> Any:
        with self._lock:
            return self.params.get(key, {}).get(agent_id)

    def is_done(self, agent_id: str) -> bool:
        with self._lock:
            return agent_id in self.params.get("done", [])

    def done(self) -> list[str]:
        with self._lock:
            return list(self.params.get("done", []))

    def mark_done(self, agent_id: str, **results: Any) -> None:
        """The agent's part is finished: record its `results` (result[key][agent_id]) and mark it done, in one
        commit, so a re-run skips it and still reports it."""

        def change() -> None:
            for key, value in results.items():
                self.result.setdefault(key, {})[agent_id] = value
            done = self.params.setdefault("done", [])
            if agent_id not in done:
                done.append(agent_id)

        self._update(change)

    def set_result(self, key: str, value: Any) -> None:
        def change() -> None:
            self.result[key] = value

        self._update(change)

    def result_copy(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.result)

    def save(self) -> None:
        """Persist the recorded params and result (a change made without the methods above, e.g. by a test)."""
        self._update(lambda: None)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _update(self, change: Callable[[], Any], first: Callable[[Session], bool] | None = None) -> Any:
        """Apply `change` to the copy and commit it (if the lease is still ours); with `first`, only when `first`
        (run first in the same transaction) answers True, else nothing changes and the answer is None."""
        with self._lock, Session(self.engine) as session:
            if first is not None and not first(session):
                session.rollback()
                return None
            answer = change()
            op = self._owned(session)
            op.params, op.result = copy.deepcopy(self.params), copy.deepcopy(self.result)
            op.updated_at = time.time()
            session.add(op)
            session.commit()
            return copy.deepcopy(answer)

    def _owned(self, session: Session) -> Operation:
        if self._stopping():  # every step is a point where the operation can be handed over intact
            raise Stopping(self.id)
        op = session.get(Operation, self.id, with_for_update=True)
        if op is None or op.lock_token != self.token:
            raise LostLease(self.id)
        return op


Runner = Callable[[OpContext], None]
