"""Runs operations: claim a row with a lock token, work without holding a session, apply only if still ours.

A claim is a lease (`locked_until`), renewed while the worker lives. When a control plane dies (kill -9), its
leases run out and any replica claims the operations again and re-runs them from the top: every operation is
written so that re-running it converges (see `operations.py`)."""

from __future__ import annotations

import copy
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.errors import OperationFailed
from control_plane.models import Event, Operation, OperationKind, OperationState

log = structlog.get_logger("control_plane.reconciler")

_UNFINISHED = (OperationState.pending, OperationState.running)
_NODE_WIDE = (OperationKind.drain, OperationKind.failover)  # they touch many tenants: they run alone


class LostLease(Exception):
    """Another worker owns the operation now; stop without writing anything."""


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


def claim(engine: Engine, lease: float) -> tuple[Operation, str] | None:
    """Take the oldest due operation whose tenant (or, for drains, whose fleet) has no other operation ahead of it,
    stamping a fresh lock token. None when nothing is due."""
    now = time.time()
    with Session(engine) as session:
        unfinished = session.exec(
            select(Operation).where(col(Operation.state).in_(_UNFINISHED)).order_by(col(Operation.created_at))
        ).all()
        blocked_tenants: set[str | None] = set()
        drain_ahead = False
        for op in unfinished:
            held = op.locked_until is not None and op.locked_until > now
            runnable = not held and not drain_ahead and op.tenant not in blocked_tenants
            if op.kind in _NODE_WIDE and blocked_tenants:
                runnable = False  # a drain waits for what was asked before it
            if runnable:
                token = secrets.token_hex(8)
                claimed = session.execute(
                    update(Operation)
                    .where(col(Operation.id) == op.id)
                    .where(or_(col(Operation.locked_until).is_(None), col(Operation.locked_until) < now))
                    .values(
                        lock_token=token,
                        locked_until=now + lease,
                        state=OperationState.running,
                        attempts=Operation.attempts + 1,
                        updated_at=now,
                    )
                )
                session.commit()
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    session.refresh(op)
                    return op, token
            blocked_tenants.add(op.tenant)
            drain_ahead = drain_ahead or op.kind in _NODE_WIDE
    return None


def finish(engine: Engine, op_id: str, token: str, error: str | None, result: dict[str, Any]) -> bool:
    """Mark the operation done if the token is still ours. Safe to call twice: the second finds no token."""
    now = time.time()
    with Session(engine) as session:
        done = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(
                state=OperationState.failed if error else OperationState.succeeded,
                error=error,
                result=result,
                lock_token=None,
                locked_until=None,
                finished_at=now,
                updated_at=now,
            )
        )
        session.commit()
        return done.rowcount == 1  # type: ignore[attr-defined]


def _renew(engine: Engine, op_id: str, token: str, lease: float) -> bool:
    with Session(engine) as session:
        renewed = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(locked_until=time.time() + lease)
        )
        session.commit()
        return renewed.rowcount == 1  # type: ignore[attr-defined]


class Reconciler:
    """`workers` threads, each: claim -> run -> finish, renewing the lease every lease/3 seconds meanwhile."""

    def __init__(self, engine: Engine, runners: dict[OperationKind, Runner], *, workers: int, lease: float) -> None:
        self.engine = engine
        self.runners = runners
        self.lease = lease
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"litefleet-op-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = claim(self.engine, self.lease)
            except Exception as exc:  # the database blinked: try again shortly
                log.warning("reconciler.claim_failed", error=str(exc))
                claimed = None
            if claimed is None:
                self._stop.wait(0.2)
                continue
            self.run(*claimed)

    def run(self, op: Operation, token: str) -> None:
        ctx = OpContext(self.engine, op, token)
        renewing = threading.Event()

        def renew() -> None:
            while not renewing.wait(self.lease / 3):
                if not _renew(self.engine, op.id, token, self.lease):
                    return

        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        error: str | None = None
        try:
            ctx.log.info("operation.started", attempt=op.attempts)
            self.runners[op.kind](ctx)
        except LostLease:
            ctx.log.warning("operation.lease_lost")
            renewing.set()
            return
        except OperationFailed as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            ctx.log.error("operation.crashed", error=error, traceback=traceback.format_exc(limit=5))
        finally:
            renewing.set()
        try:
            if error:
                ctx.step("operation.failed", error)
            else:
                ctx.step("operation.succeeded")
        except LostLease:
            return
        finish(self.engine, op.id, token, error, ctx.result)
