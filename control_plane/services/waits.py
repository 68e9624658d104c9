"""Long waits that hold no DB connection and no worker thread: `?wait=true` on an operation, `?wait=N` on a
workflow.

A wait is a slot (at most `max_waits` at once per control plane; past that the caller gets `429 too_many_waits`
with `Retry-After`, before anything is queued) plus, for an operation, an asyncio future. One poller task reads
the states of every awaited operation in one short query per `wait_poll_interval` and resolves the futures of
those that finished: 200 waiters cost one query per interval, not 200, and no connection is held between polls."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import Operation, OperationState
from control_plane.errors import TooManyWaits

log = structlog.get_logger("control_plane.waits")

FINISHED = (OperationState.succeeded, OperationState.failed)
_CHUNK = 500  # ids per IN (...) of one poll


class Waits:
    def __init__(self, engine: Engine, *, limit: int, interval: float = 0.2) -> None:
        self.engine = engine
        self.limit = limit
        self.interval = interval
        self._lock = threading.Lock()  # slots are taken from sync routes (worker threads) and async ones
        self._taken = 0
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._poller: asyncio.Task[None] | None = None

    @property
    def taken(self) -> int:
        return self._taken

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of the `limit` waits, for as long as the block runs; TooManyWaits (429) when all are taken."""
        with self._lock:
            if self._taken >= self.limit:
                raise TooManyWaits(
                    f"{self.limit} requests are already waiting on this control plane: "
                    "retry later, or poll without wait"
                )
            self._taken += 1
        try:
            yield
        finally:
            with self._lock:
                self._taken -= 1

    async def operation(self, op_id: str, timeout: float) -> None:
        """Return once operation `op_id` finished (or does not exist), or after `timeout` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(op_id, []).append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiting.get(op_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(op_id, None)

    async def _poll(self) -> None:
        """Runs while anyone waits: one short query (in a thread, off the event loop) per interval."""
        while self._waiting:
            try:
                done = await asyncio.to_thread(self._finished, list(self._waiting))
            except Exception as exc:  # the DB is busy or away: the waits go on until their own deadlines
                log.warning("waits.poll_failed", error=type(exc).__name__)
                done = set()
            for op_id in done:
                for future in self._waiting.pop(op_id, []):
                    if not future.done():
                        future.set_result(None)
            if self._waiting:
                await asyncio.sleep(self.interval)

    def _finished(self, ids: list[str]) -> set[str]:
        """The ids among `ids` that finished or do not exist (nothing to wait for)."""
        open_ids: set[str] = set()
        with Session(self.engine) as session:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                rows = session.exec(select(Operation.id, Operation.state).where(col(Operation.id).in_(chunk))).all()
                open_ids.update(op_id for op_id, state in rows if state not in FINISHED)
        return set(ids) - open_ids
