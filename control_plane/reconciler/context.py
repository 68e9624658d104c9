"""What an operation's code sees: its row's params, a step log, and writes that land only with the lease."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Event, Operation
from control_plane.reconciler.claims import LostLease

log = structlog.get_logger("control_plane.reconciler")


class OpContext:
    """What an operation's code sees: its row's params, a step log, and writes that land only with the lease."""

    def __init__(self, engine: Engine, op: Operation, token: str) -> None:
        self.engine = engine
        self.id = op.id
        self.kind = op.kind
        self.tenant = op.tenant
        self.node = op.node
        self.params: dict[str, Any] = dict(op.params)
        self.result: dict[str, Any] = dict(op.result)
        self.token = token
        self.lock = threading.RLock()  # agents of one operation may move in parallel: guard params and result
        self.log = log.bind(op=op.id, kind=op.kind.value, tenant=op.tenant, node=op.node)

    def step(self, name: str, message: str = "", *, agent: int | None = None, **detail: Any) -> None:
        """Append a line to the operation's log (and an event), e.g. `ctx.step("agent.started", agent=0)`."""
        entry = {"at": round(time.time(), 3), "step": name, "message": message, **detail}
        if agent is not None:
            entry["agent"] = agent
        self.log.info(name, message=message, agent=agent, **detail)
        with Session(self.engine) as session:
            op = self._owned(session)
            op.steps = [*op.steps, entry]
            op.updated_at = time.time()
            session.add(op)
            session.add(
                Event(
                    kind=name,
                    tenant=self.tenant,
                    node=detail.get("node") or self.node,
                    agent=agent,
                    operation=self.id,
                    message=message,
                )
            )
            session.commit()

    def save(self) -> None:
        """Persist `params` (the plan) and `result` so a re-run after a crash follows the same plan."""
        # One save at a time: a snapshot taken earlier must never be committed after a later one (parallel moves
        # would lose each other's `stopped_at` and a re-run after a crash would not find it).
        with self.lock, Session(self.engine) as session:
            op = self._owned(session)
            op.params, op.result = copy.deepcopy(self.params), copy.deepcopy(self.result)
            op.updated_at = time.time()
            session.add(op)
            session.commit()

    def _owned(self, session: Session) -> Operation:
        op = session.get(Operation, self.id, with_for_update=True)
        if op is None or op.lock_token != self.token:
            raise LostLease(self.id)
        return op


Runner = Callable[[OpContext], None]
