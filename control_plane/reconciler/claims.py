"""Claims on operation rows: take one with a fresh lock token (a lease), renew it, finish only while it is ours.

A claim is a lease (`locked_until`), renewed while the worker lives. When a control plane dies (kill -9), its
leases run out and any replica claims the operations again and re-runs them from the top."""

from __future__ import annotations

import secrets
import time
from typing import Any, cast

from sqlalchemy import or_, update
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlmodel import Session, col, select

from control_plane.db.models import Operation, OperationKind, OperationState

UNFINISHED = (OperationState.pending, OperationState.running)
_NODE_WIDE = (OperationKind.drain, OperationKind.failover)  # they touch many tenants: they run alone


class LostLease(Exception):
    """Another worker owns the operation now; stop without writing anything."""


class Stopping(LostLease):
    """This control plane is stopping: leave the operation at this step, release its lease (`release`) and let
    any replica resume it from the recorded plans at once."""


def claim(engine: Engine, lease: float) -> tuple[Operation, str] | None:
    """Take the oldest due operation whose tenant (or, for drains, whose fleet) has no other operation ahead of it,
    stamping a fresh lock token. None when nothing is due."""
    now = time.time()
    with Session(engine) as session:
        unfinished = session.exec(
            select(Operation).where(col(Operation.state).in_(UNFINISHED)).order_by(col(Operation.created_at))
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
                if _rows(claimed) == 1:
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
        return _rows(done) == 1


def release(engine: Engine, op_id: str, token: str) -> bool:
    """Give the operation back unfinished (still `running`, no lock): the next `claim` anywhere takes it at once
    and re-runs it from the top. Safe to call twice: the second call finds the token gone."""
    with Session(engine) as session:
        released = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(lock_token=None, locked_until=None, updated_at=time.time())
        )
        session.commit()
        return _rows(released) == 1


def renew(engine: Engine, op_id: str, token: str, lease: float) -> bool:
    with Session(engine) as session:
        renewed = session.execute(
            update(Operation)
            .where(col(Operation.id) == op_id)
            .where(col(Operation.lock_token) == token)
            .values(locked_until=time.time() + lease)
        )
        session.commit()
        return _rows(renewed) == 1


def _rows(result: Result[Any]) -> int:
    """Rows an UPDATE matched (SQLAlchemy types execute() as Result; for an UPDATE it is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount
