"""Runs operations: claim a row with a lock token, work without holding a session, apply only if still ours.

Every operation is written so that re-running it from the top converges (see `runners/`): when a control plane
dies, its leases run out and any replica claims the operations again."""

from __future__ import annotations

import threading
import time
import traceback
from functools import partial

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.models import Operation, OperationKind
from control_plane.errors import OperationFailed
from control_plane.reconciler import stuck
from control_plane.reconciler.claims import LostLease, Only, Stopping, claim, finish, release, renew
from control_plane.reconciler.context import OpContext, Runner
from control_plane.timing import Periodic

log = structlog.get_logger("control_plane.reconciler")


class Reconciler:
    """`workers` threads, each: claim -> run -> finish, renewing the lease every lease/3 seconds meanwhile.
    `workers=0` runs nothing by itself: `run` is then called by hand (tests).

    With `node_workers`, node-wide operations (fail-overs, drains) run on those threads only, up to that many at
    once (`claim`'s bound, across control planes), and the `workers` take tenant operations only: a mass node
    outage fails nodes over in parallel and never holds a tenant's scale behind a queue of fail-overs. Without,
    the `workers` take both, but leave one of them to tenant operations (at most workers - 1 node-wide at once).

    With `stuck_after`, one more thread sweeps for stuck agents every `stuck_interval` (`stuck.sweep`)."""

    def __init__(
        self,
        engine: Engine,
        runners: dict[OperationKind, Runner],
        *,
        workers: int,
        lease: float,
        stuck_after: float | None = None,
        stuck_interval: float = 15.0,
        node_workers: int = 0,
    ) -> None:
        self.engine = engine
        self.runners = runners
        self.lease = lease
        self._stopping = threading.Event()
        shared: Only | None = "tenant" if node_workers else None
        self.node_wide_limit = node_workers or max(1, workers - 1)
        self._workers = [
            Periodic(f"litefleet-op-{i}", 0.2, partial(self._work, shared), first_at_once=True) for i in range(workers)
        ] + [
            Periodic(f"litefleet-node-op-{i}", 0.2, partial(self._work, "node"), first_at_once=True)
            for i in range(node_workers)
        ]
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

    def _work(self, only: Only | None) -> None:
        """Run due operations one after another until none is due (the thread then waits 0.2 s)."""
        while not self._stopping.is_set():
            try:
                claimed = claim(self.engine, self.lease, only=only, node_wide_limit=self.node_wide_limit)
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
