"""A circuit breaker per agent, so that one frozen agent costs its tenant a few slow requests, not all of them.

closed     calls go through; `threshold` failures in a row open it
open       calls are skipped (the agent counts as not answering) for `cooldown` seconds
half-open  after the cool-down one trial goes out (the router sends a probe of its own, never a user's request,
           so nobody waits on a frozen agent), and the next trial waits another cool-down: a success
           closes the breaker, a failure opens it again

Keys name an incarnation (agent id and generation): a fail-over's new incarnation starts closed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None


class Breakers:
    def __init__(self, threshold: int = 3, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> str:
        """`call` (closed), `skip` (open), or `trial`: past the cool-down of an open breaker, once per
        cool-down, whoever asks gets to run one trial call (the others skip until its outcome or the next
        cool-down)."""
        with self._lock:
            state = self._states.get(key)
            if state is None or state.opened_at is None:
                return "call"
            now = self._clock()
            if now - state.opened_at < self.cooldown:
                return "skip"
            state.opened_at = now
            return "trial"

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._states.pop(key, None)

    def failed(self, key: str) -> None:
        with self._lock:
            state = self._states.setdefault(key, _State())
            state.failures += 1
            if state.failures >= self.threshold:
                state.opened_at = self._clock()

    def state(self, key: str) -> str:
        with self._lock:
            state = self._states.get(key)
            if state is None or state.opened_at is None:
                return "closed"
            return "open" if self._clock() - state.opened_at < self.cooldown else "half_open"
