"""Workflows exercising each runtime feature; the tests import this module as the bundle."""

import threading

from agent_image import (
    Queue,
    StepError,
    get_event,
    recv,
    send,
    set_event,
    sleep,
    start_workflow,
    step,
    workflow,
    workflow_id,
)

__version__ = "2"
COMPATIBLE_VERSIONS = {"1"}

calls: dict[str, int] = {}
gate = threading.Event()
running_now: list[int] = [0]
peak: list[int] = [0]
lock = threading.Lock()


def _count(name: str) -> None:
    calls[name] = calls.get(name, 0) + 1


@step
def double(x: int) -> int:
    _count("double")
    return 2 * x


@step(retries=3, backoff=0.01)
def flaky(fail_times: int) -> str:
    _count("flaky")
    if calls["flaky"] <= fail_times:
        raise ConnectionError(f"attempt {calls['flaky']} failed")
    return "ok"


@step
def boom() -> None:
    raise ValueError("no good")


@step
def returns_a_set() -> object:
    return {1, 2}


@step
def gated() -> str:
    with lock:
        running_now[0] += 1
        peak[0] = max(peak[0], running_now[0])
    gate.wait(10)
    with lock:
        running_now[0] -= 1
    return "through"


@workflow
def pipeline(x: int) -> int:
    return double(double(double(x)))


@workflow
def doubled_plus_one(x: int) -> int:
    return double(x) + 1  # code runs after the step: its checkpoint cannot wait for the finish


@workflow
def retrying(fail_times: int) -> str:
    return flaky(fail_times)


@workflow
def catches_step_error() -> str:
    try:
        boom()
    except StepError as exc:
        return f"caught {exc.error_type}: {exc.message}"
    return "unreachable"


@workflow
def fails() -> None:
    boom()


@workflow
def bad_value() -> object:
    return returns_a_set()


@workflow
def napper(seconds: float) -> str:
    sleep(seconds)
    return "rested"


@workflow
def listener(timeout: float) -> object:
    return recv("inbox", timeout=timeout)


@workflow
def talker(target: str) -> str:
    send(target, {"from": workflow_id()}, "inbox")
    return "sent"


@workflow
def publisher(value: str) -> str:
    set_event("status", value)
    return value


@workflow
def subscriber(target: str) -> object:
    return get_event(target, "status", timeout=5)


@workflow
def parent(n: int) -> list[int]:
    handles = [start_workflow(pipeline, i) for i in range(n)]
    return [h.result() for h in handles] + [pipeline(10)]


@workflow
def waits_forever() -> object:
    return recv("never", timeout=3600)


@workflow
def parent_of_sleeper() -> object:
    return waits_forever()


TOOLS = Queue("tools", concurrency=2)


@workflow(queue=TOOLS)
def queued() -> str:
    return gated()


@workflow
def stubborn_napper(seconds: float) -> str:
    """Hides every BaseException its sleep raises, as hostile tenant code may."""
    try:
        sleep(seconds)
    except BaseException:  # the point of this workflow
        return "woke early"
    return "rested"
