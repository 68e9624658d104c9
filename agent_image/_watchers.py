"""Wake-ups for whoever waits on a workflow: for it to settle, or for one of its events to be set."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar, cast

T = TypeVar("T")
Key = tuple[str, ...]  # ("settled", workflow id) or ("event", workflow id, key)


class _Woken(threading.Event):
    """The event `wait_for` waits on; `fire` may hand it what it waits for (`handed`), saving it a read."""

    handed: object = None


class Watchers:
    """Threading events to set when something happens under a key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[Key, set[threading.Event]] = {}

    @contextmanager
    def watch(self, key: Key, event: threading.Event) -> Iterator[None]:
        """Have `event` set whenever `key` fires, while the block runs."""
        with self._lock:
            self._events.setdefault(key, set()).add(event)
        try:
            yield
        finally:
            with self._lock:
                events = self._events.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._events[key]

    def fire(self, key: Key, handed: object = None) -> None:
        """Set every event watching `key`. `handed`, when given, is what a `wait_for` on `key` would see as done:
        it must no longer change (a settled workflow's final status), since the waiter answers with it."""
        with self._lock:
            events = list(self._events.get(key, ()))
        for event in events:
            if handed is not None and isinstance(event, _Woken):
                event.handed = handed
            event.set()

    def fire_all(self) -> None:
        """Wake every watcher (the runtime is stopping: each re-checks and answers with what it has)."""
        with self._lock:
            events = [event for events in self._events.values() for event in events]
        for event in events:
            event.set()

    def wait_for(
        self,
        key: Key,
        timeout: float | None,
        look: Callable[[], tuple[bool, T]],
        *,
        stopping: Callable[[], bool],
        idle: Callable[[], bool] = lambda: False,
    ) -> T:
        """Call `look` until it reports done, `timeout` seconds pass (None: no limit) or `stopping()`; return
        what it saw last, or what `fire` handed it. Woken early by `key`. While `idle()` holds, nothing can have
        changed before the next wake-up, so `look` waits for one (saves a read per wait on a running workflow).
        `stopping` must turn true before `fire_all` is called, so a watcher registered after that call still sees
        it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        woken = _Woken()

        def remaining() -> float | None:
            return None if deadline is None else deadline - time.monotonic()

        with self.watch(key, woken):
            while True:
                left = remaining()
                if idle() and not stopping():
                    woken.wait(None if left is None else max(0.0, left))
                woken.clear()  # whatever sets it after this changed what `look` sees
                if woken.handed is not None:
                    return cast(T, woken.handed)
                done, seen = look()
                left = remaining()
                if done or stopping() or (left is not None and left <= 0):
                    return seen
                woken.wait(left if left is not None else 1.0)
