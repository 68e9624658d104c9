"""Run `finish_in_one` (its last step's checkpoint rides with the finish) to completion in this process, which
test_merged_finish kills -9 and restarts.

usage: finish_runner.py DB EFFECTS HOLD
Each step appends "<name>" to EFFECTS (fsynced) and then waits HOLD seconds before returning. Prints the
workflow's result and the commits this process made as JSON."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agent_image import Runtime, step, workflow
from agent_image.logs import configure_logging


def _effect(line: str) -> None:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@step
def first(x: int) -> int:
    _effect("first")
    return x + 1


@step
def last(x: int) -> int:
    _effect("last")
    time.sleep(float(sys.argv[3]))  # a window for the test to take the file's write lock
    return x * 10


@workflow
def finish_in_one(x: int) -> int:
    return last(first(x))


def main() -> None:
    configure_logging("WARNING")
    runtime = Runtime(sys.argv[1], sys.modules[__name__])
    runtime.recover()
    before = runtime.store.commits
    result = runtime.start(finish_in_one, (4,), id="w").result(60)
    print(json.dumps({"result": result, "commits": runtime.store.commits - before}))
    runtime.close()


if __name__ == "__main__":
    main()
