"""A bundle for crash tests: every step execution appends a line to CRASH_EFFECTS (fsynced), and the process
SIGKILLs itself when it reaches the point named by CRASH_AT ("before|inside|boundary:<workflow>:<step>")."""

import os
import signal
import time

from agent_image import recv, sleep, step, workflow, workflow_id

STEPS = 3


def _effect(line: str) -> None:
    fd = os.open(os.environ["CRASH_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _maybe_crash(point: str) -> None:
    if os.environ.get("CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


@step
def work(i: int) -> int:
    wid = workflow_id()
    _maybe_crash(f"before:{wid}:{i}")
    time.sleep(float(os.environ.get("CRASH_STEP_SECONDS", "0.02")))
    _effect(f"{wid}:{i}")
    _maybe_crash(f"inside:{wid}:{i}")
    return i * i


@workflow
def pipeline(nap: float) -> int:
    total = 0
    for i in range(STEPS):
        total += work(i)
        _maybe_crash(f"boundary:{workflow_id()}:{i}")
    sleep(nap)
    message = recv("go", timeout=120)
    total += work(STEPS) + message["bonus"]
    return total


def expected(bonus: int) -> int:
    return sum(i * i for i in range(STEPS + 1)) + bonus
