"""Start-up phase marks: one `agent.start_phase` log event per step of an agent container's start (issue 14).

Each mark carries `at` (the wall clock, which the container's processes share with the host: a bench can place
every phase after its own `docker run`) and `process_s` (seconds since this process was started by the kernel, so
the interpreter's own start and imports are visible too). `bench/agent_start_profile.py` reads them back from the
container's log. Marks cost one log line each and are only written at start."""

from __future__ import annotations

import os
import time
from typing import Any

import structlog

log = structlog.get_logger("agent_image.start")


def process_age() -> float | None:
    """Seconds since the kernel started this process (10 ms resolution), None where /proc cannot tell."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, `starttime`, in ticks since boot
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError):
        return None


def mark(phase: str, **fields: Any) -> None:
    """Log that `phase` has just ended."""
    age = process_age()
    log.info(
        "agent.start_phase",
        phase=phase,
        at=round(time.time(), 4),
        process_s=None if age is None else round(age, 3),
        pid=os.getpid(),
        **fields,
    )
