"""The agent's periodic daemon threads (fence watch, replication monitor): one shape, written once."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """Calls `tick()` on a daemon thread every `interval` seconds (first right away when `immediately`) until
    `stop()`, or until `tick` returns False."""

    def __init__(self, name: str, interval: float, tick: Callable[[], bool | None], *, immediately: bool = False):
        self.interval = interval
        self._tick = tick
        self._immediately = immediately
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        if self._immediately and self._tick() is False:
            return
        while not self._stop.wait(self.interval):
            if self._tick() is False:
                return
