"""One way to retry until a deadline on the agent side (the container's start, the demo's wait for /readyz)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry_until(attempt: Callable[[], T], *, seconds: float, interval: float, errors: tuple[type[Exception], ...]) -> T:
    """What `attempt()` returns once it does not raise one of `errors`; tried every `interval` seconds, and
    after `seconds` the last such error is raised to the caller."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return attempt()
        except errors:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)
