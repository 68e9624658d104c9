"""Runs operations: claim a row with a lock token, work without holding a session, apply only if still ours.

Every operation is written so that re-running it from the top converges (see `runners/`): when a control plane
dies, its leases run out and any replica claims the operations again."""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from functools import partial

import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.models import Operation, OperationKind
from control_plane.errors import OperationFailed
from control_plane.reconciler import stuck
from control_plane.reconciler.claims import LostLease, Only, Stopping, claim_batch, finish, release, renew
from control_plane.reconciler.context import OpContext, Runner
from control_plane.timing import Periodic

log = structlog.get_logger("control_plane.reconciler")
Claimed = tuple[Operation, str]
IDLE_LOOK = 0.2  # seconds between an idle worker's looks at the queue (an operation queued here wakes it at once)


class _Lane:
    """The workers that take one kind of operation (`only`). Whichever of them is idle claims for all of them: up
    to as many operations as the lane has idle workers, in one read of the queue (`claim_batch`); the others take
    theirs from the hand-over queue at their next look (0.2 s at most) without reading the queue again."""

    def __init__(self, only: Only | None, size: int) -> None:
        self.only = only
        self.size = size
        self._lock = threading.Lock()
        self._handed: deque[Claimed] = deque()
        self._busy = 0

    def take(self, claim: Callable[[Only | None, int], list[Claimed]]) -> Claimed | None:
        """An operation for the calling (idle) worker: one handed over, else a fresh batch's first; None when
        nothing is due."""
        with self._lock:
            if not self._handed:
                self._handed.extend(claim(self.only, self.size - self._busy))
            if not self._handed:
                return None
            self._busy += 1
            return self._handed.popleft()

    def done(self) -> None:
        with self._lock:
            self._busy -= 1

    def leftovers(self) -> list[Claimed]:
        """Claimed and never started (the workers stopped first): to be released."""
        with self._lock:
            left, self._handed = list(self._handed), deque()
            return left


class Reconciler:
    """`workers` threads, each: claim -> run -> finish, renewing the lease every lease/3 seconds meanwhile.
    `workers=0` runs nothing by itself: `run` is then called by hand (tests).

    With `node_workers`, node-wide operations (fail-overs, drains) run on those threads only, up to that many at
    once (`claim`'s bound, across control planes), and the `workers` take tenant operations only: a mass node
    outage fails nodes over in parallel and never holds a tenant's scale behind a queue of fail-overs. Without,
    the `workers` take both, but leave one of them to tenant operations (at most workers - 1 node-wide at once).

    With `stuck_after`, one more thread sweeps for stuck agents every `stuck_interval` (`stuck.sweep`).

    An idle worker looks at the queue every 0.2 s; `wake()` makes it look now (the API queued an operation on this
    control plane), and `on_finished` is called after each operation this control plane finished (its `?wait=`
    requests read the outcome at once). Operations queued on another replica wait for the tick, as before."""

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
        on_finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.runners = runners
        self.lease = lease
        self._on_finished = on_finished
        self._stopping = threading.Event()
        self.node_wide_limit = node_workers or max(1, workers - 1)
        shared = _Lane("tenant" if node_workers else None, workers)
        self._lanes = [shared] + ([_Lane("node", node_workers)] if node_workers else [])
        self._workers = [
            Periodic(f"litefleet-op-{i}", IDLE_LOOK, partial(self._work, shared), first_at_once=True)
            for i in range(workers)
        ] + [
            Periodic(f"litefleet-node-op-{i}", IDLE_LOOK, partial(self._work, self._lanes[-1]), first_at_once=True)
            for i in range(node_workers)
        ]
        self._claimers = list(self._workers)
        if stuck_after is not None:
            after = stuck_after
            self._workers.append(Periodic("litefleet-stuck", stuck_interval, lambda: self._sweep(after)))

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def wake(self) -> None:
        """An operation was just queued: every idle worker looks at the queue now (one read fills them all)."""
        for worker in self._claimers:
            worker.wake()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop claiming; each running operation stops at its next step and its lease is released, so another
        control plane claims it at once (not a lease later); join the threads. True when all ended in `timeout`
        (an operation inside one long call, a container start, ends with that call; its lease then runs out)."""
        self._stopping.set()
        for worker in self._workers:
            worker.stop()
        deadline = time.monotonic() + timeout
        ended = all([worker.join(max(0.0, deadline - time.monotonic())) for worker in self._workers])
        for lane in self._lanes:
            for op, token in lane.leftovers():
                release(self.engine, op.id, token)
        return ended

    def _sweep(self, stuck_after: float) -> None:
        try:
            stuck.sweep(self.engine, stuck_after)
        except SQLAlchemyError as exc:  # the database blinked: the next sweep looks again
            log.warning("reconciler.sweep_failed", error=str(exc))

    def _claim(self, only: Only | None, limit: int) -> list[Claimed]:
        return claim_batch(self.engine, self.lease, only=only, node_wide_limit=self.node_wide_limit, limit=limit)

    def _work(self, lane: _Lane) -> None:
        """Run due operations one after another until none is due (the thread then waits 0.2 s)."""
        while not self._stopping.is_set():
            try:
                claimed = lane.take(self._claim)
            except SQLAlchemyError as exc:  # the database blinked: try again shortly
                log.warning("reconciler.claim_failed", error=str(exc), exc_info=True)
                return
            if claimed is None:
                return
            try:
                if self._stopping.is_set():  # claimed as stop() began: hand it straight back
                    release(self.engine, claimed[0].id, claimed[1])
                    return
                self.run(*claimed)
            finally:
                lane.done()

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
        if finish(self.engine, op.id, token, error, ctx.result):
            self._on_finished()
