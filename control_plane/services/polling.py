"""Many requests waiting on the event loop for the fleet DB to say something, served by one poller.

Each waiter registers a key (an operation id, a tenant) and gets a future; one task, running only while someone
waits, reads every registered key in one call per `interval` (in a thread, off the event loop) and resolves the
futures of the keys the read answered. No waiter holds a DB connection or a worker thread: N waiters cost one
read per interval, not N."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("control_plane.polling")

Key = TypeVar("Key")
Value = TypeVar("Value")


class Poller(Generic[Key, Value]):
    """`read(keys)` answers the keys it can resolve now ({key: value}); the others keep waiting. `first_at_once`:
    the first read runs as soon as the poller starts (else after one interval: the caller has just read)."""

    def __init__(
        self,
        name: str,
        read: Callable[[list[Key]], dict[Key, Value]],
        interval: float,
        *,
        first_at_once: bool,
    ) -> None:
        self.name = name
        self.interval = interval
        self._read = read
        self._first_at_once = first_at_once
        self._waiting: dict[Key, list[asyncio.Future[Value]]] = {}
        self._task: asyncio.Task[None] | None = None
        # the running task's loop and event: `poll_now` sets the event (from any thread), its pause ends at once
        self._nudge: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    async def wait(self, key: Key, timeout: float) -> Value | None:
        """What a read answers for `key`, or None after `timeout` seconds."""
        future: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, timeout))
        except TimeoutError:
            return None
        finally:
            waiters = self._waiting.get(key, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiting.pop(key, None)

    def poll_now(self) -> None:
        """From any thread: read at once rather than at the end of the pause (what the waiters wait for may just
        have happened: an operation this control plane ran finished). A no-op while nobody waits."""
        if self._nudge is not None:
            loop, nudged = self._nudge
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits on it
                loop.call_soon_threadsafe(nudged.set)

    async def _poll(self) -> None:
        pause = not self._first_at_once
        nudged = asyncio.Event()
        self._nudge = (asyncio.get_running_loop(), nudged)
        while self._waiting:
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(nudged.wait(), self.interval)
                nudged.clear()
                if not self._waiting:
                    break
            pause = True
            try:
                answered = await asyncio.to_thread(self._read, list(self._waiting))
            except Exception as exc:  # the DB is busy or away: the waiters go on until their own deadlines
                log.warning(f"{self.name}.poll_failed", error=type(exc).__name__)
                continue
            for key, value in answered.items():
                for future in self._waiting.pop(key, []):
                    if not future.done():
                        future.set_result(value)
