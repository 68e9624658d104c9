"""Runs operations: claim a row with a lock token, work without holding a session, apply only if still ours.

Every operation is written so that re-running it from the top converges (see `runners/`): when a control plane
dies, its leases run out and any replica claims the operations again."""

from __future__ import annotations

import threading
import time
import traceback

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.models import Operation, OperationKind
from control_plane.errors import OperationFailed
from control_plane.reconciler import stuck
from control_plane.reconciler.claims import LostLease, Stopping, claim, finish, release, renew
from control_plane.reconciler.context import OpContext, Runner
from control_plane.timing import Periodic

log = structlog.get_logger("control_plane.reconciler")


class Reconciler:
    """`workers` threads, each: claim -> run -> finish, renewing the lease every lease/3 seconds meanwhile; with
    `stuck_after`, one more thread sweeps for stuck agents every `stuck_interval` (`stuck.sweep`).
    `workers=0` runs nothing by itself: `run` is then called by hand (tests)."""

    def __init__(
        self,
        engine: Engine,
        runners: dict[OperationKind, Runner],
        *,
        workers: int,
        lease: float,
        stuck_after: float | None = None,
        stuck_interval: float = 15.0,
    ) -> None:
        self.engine = engine
        self.runners = runners
        self.lease = lease
        self._stopping = threading.Event()
        self._workers = [Periodic(f"litefleet-op-{i}", 0.2, self._work, first_at_once=True) for i in range(workers)]
        if stuck_after is not None:
            after = stuck_after
            self._workers.append(Periodic("litefleet-stuck", stuck_interval, lambda: self._sweep(after)))

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop claiming; each running operation stops at its next step and its lease is released, so another
        control plane claims it at once (not a lease later); join the threads. True when all ended in `timeout`
        (an operation inside one long call, a container start, ends with that call; its lease then runs out)."""
        self._stopping.set()
        for worker in self._workers:
            worker.stop()
        deadline = time.monotonic() + timeout
        return all([worker.join(max(0.0, deadline - time.monotonic())) for worker in self._workers])

    def _sweep(self, stuck_after: float) -> None:
        try:
            stuck.sweep(self.engine, stuck_after)
        except SQLAlchemyError as exc:  # the database blinked: the next sweep looks again
            log.warning("reconciler.sweep_failed", error=str(exc))

    def _work(self) -> None:
        """Run due operations one after another until none is due (the thread then waits 0.2 s)."""
        while not self._stopping.is_set():
            try:
                claimed = claim(self.engine, self.lease)
            except SQLAlchemyError as exc:  # the database blinked: try again shortly
                log.warning("reconciler.claim_failed", error=str(exc), exc_info=True)
                return
            if claimed is None:
                return
            if self._stopping.is_set():  # claimed as stop() began: hand it straight back
                release(self.engine, claimed[0].id, claimed[1])
                return
            self.run(*claimed)

    def run(self, op: Operation, token: str) -> None:
        ctx = OpContext(self.engine, op, token, self._stopping.is_set)
        renewer = Periodic(
            f"litefleet-lease-{op.id}", self.lease / 3, lambda: renew(self.engine, op.id, token, self.lease)
        )
        renewer.start()
        error: str | None = None
        try:
            ctx.log.info("operation.started", attempt=op.attempts)
            self.runners[op.kind](ctx)
        except Stopping:
            renewer.stop()
            renewer.join()
            released = release(self.engine, op.id, token)
            ctx.log.info("operation.released", released=released)
            return
        except LostLease:
            ctx.log.warning("operation.lease_lost")
            renewer.stop()
            return
        except OperationFailed as exc:
            error = str(exc) if exc.code == OperationFailed.code else f"{exc.code}: {exc}"
            ctx.result["error_code"] = exc.code
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            ctx.log.error("operation.crashed", error=error, traceback=traceback.format_exc(limit=5))
        finally:
            renewer.stop()
            renewer.join()
        try:
            if error:
                ctx.step("operation.failed", error)
            else:
                ctx.step("operation.succeeded")
        except Stopping:
            release(self.engine, op.id, token)
            return
        except LostLease:
            return
        finish(self.engine, op.id, token, error, ctx.result)
