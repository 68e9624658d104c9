"""Daemon threads reused across workflow runs: starting a thread costs more than a short step does."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class Workers:
    """Runs each submitted call on an idle worker thread, or on a new one when none is idle (never queues
    behind a busy one: a workflow sleeping for a day must not delay another's start)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._count += 1
            else:
                self._idle -= 1
        self._tasks.put((fn, args))
        if spawn:
            threading.Thread(target=self._loop, name=f"{self._name}-{self._count}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args = self._tasks.get()
            fn(*args)
            with self._lock:
                self._idle += 1
