"""Long waits that hold no DB connection and no worker thread: `?wait=true` on an operation, `?wait=N` on a
workflow.

A wait is a slot (at most `max_waits` at once per control plane; past that the caller gets `429 too_many_waits`
with `Retry-After`, before anything is queued) plus, for an operation, a wait on one `Poller` (services/polling.py)
that reads the states of every awaited operation in one short query per `wait_poll_interval` and wakes those
that finished: 200 waiters cost one query per interval, not 200, and no connection is held between polls."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import FINISHED_STATES, Operation
from control_plane.errors import TooManyWaits
from control_plane.services.polling import Poller

_CHUNK = 500  # ids per IN (...) of one poll


class Waits:
    def __init__(self, engine: Engine, *, limit: int, interval: float = 0.2) -> None:
        self.engine = engine
        self.limit = limit
        self.interval = interval
        self._lock = threading.Lock()  # slots are taken from sync routes (worker threads) and async ones
        self._taken = 0
        self._poller: Poller[str, None] = Poller("waits", self._finished, interval, first_at_once=True)

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

    def operation_finished(self) -> None:
        """From any thread (the reconciler's): an operation finished here, so the waiters' next poll runs now."""
        self._poller.poll_now()

    async def operation(self, op_id: str, timeout: float) -> None:
        """Return once operation `op_id` finished (or does not exist), or after `timeout` seconds."""
        await self._poller.wait(op_id, timeout)

    def _finished(self, ids: list[str]) -> dict[str, None]:
        """The ids among `ids` that finished or do not exist (nothing to wait for)."""
        open_ids: set[str] = set()
        with Session(self.engine) as session:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                rows = session.exec(select(Operation.id, Operation.state).where(col(Operation.id).in_(chunk))).all()
                open_ids.update(op_id for op_id, state in rows if state not in FINISHED_STATES)
        return dict.fromkeys(set(ids) - open_ids)
