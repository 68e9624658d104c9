"""Runs operations: claim a row with a lock token, work without holding a session, apply only if still ours.

Every operation is written so that re-running it from the top converges (see `runners/`): when a control plane
dies, its leases run out and any replica claims the operations again."""

from __future__ import annotations

import threading
import traceback

import structlog
from sqlalchemy.engine import Engine

from control_plane.db.models import Operation, OperationKind
from control_plane.errors import OperationFailed
from control_plane.reconciler.claims import LostLease, claim, finish, renew
from control_plane.reconciler.context import OpContext, Runner

log = structlog.get_logger("control_plane.reconciler")


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

        def keep_lease() -> None:
            while not renewing.wait(self.lease / 3):
                if not renew(self.engine, op.id, token, self.lease):
                    return

        renewer = threading.Thread(target=keep_lease, daemon=True)
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
