"""The two ways the control plane waits: polling until a deadline, and a daemon thread that repeats some work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import structlog

log = structlog.get_logger("control_plane.timing")


def poll(timeout: float, interval: float) -> Iterator[float]:
    """Yield the seconds left, at once and then every `interval`, until `timeout` seconds have passed:

    for _ in poll(30, 0.1):
        if done():
            break
    else:
        raise TimeoutError(...)
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield left
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


class Periodic:
    """A daemon thread that runs `work` every `interval` seconds (first after one interval) until `stop()`, or
    until `work` returns False. A failing round is logged with its traceback and the next one runs as planned.

    By default the pause is `interval` after each round ends. With `fixed_rate`, rounds start every `interval`
    whatever they took (a round that overran starts the next one at once, never a burst of missed ones): what a
    heartbeat needs for a detection bound that does not grow with the time its rounds take."""

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], bool | None],
        *,
        first_at_once: bool = False,
        fixed_rate: bool = False,
    ):
        self.name = name
        self.interval = interval
        self._work = work
        self._first_at_once = first_at_once
        self._fixed_rate = fixed_rate
        self._stop = threading.Event()
        self._woken = threading.Event()  # set by stop() and wake(): the pause between rounds ends at once
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._woken.set()

    def wake(self) -> None:
        """Run the next round now, not after the pause (a wake during a round runs one more right after it)."""
        self._woken.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after `stop()`); True when it did (or never started)."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`, or until woken; True when stopping."""
        self._woken.wait(seconds)
        self._woken.clear()
        return self._stop.is_set()

    def _loop(self) -> None:
        if not self._first_at_once and self._pause(self.interval):
            return
        while True:
            started = time.monotonic()
            try:
                if self._work() is False:
                    return
            except Exception:
                log.exception("periodic.round_failed", thread=self.name)
            pause = self.interval - (time.monotonic() - started) if self._fixed_rate else self.interval
            if self._pause(max(0.0, pause)):
                return
