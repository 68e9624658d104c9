"""A bundle whose operations depend on a value read outside any step (the BRANCH variable): the kind of
non-determinism a replay must catch. Branch A logs a step and a sleep; branch B never reaches them."""

import contextlib
import os

from agent_image import sleep, step, workflow

__version__ = "1"


@step
def alpha() -> str:
    return "alpha"


@step
def beta() -> str:
    return "beta"


@workflow
def branching() -> dict[str, str]:
    branch = os.environ.get("BRANCH", "A")
    if branch == "A":
        alpha()
        sleep(60)
        return {"mode": "A"}
    if branch == "other-step":
        beta()
        return {"mode": "other-step"}
    if branch == "swallows":  # calls beta where the log holds the sleep, and hides the replay's complaint
        alpha()
        with contextlib.suppress(BaseException):  # hostile tenant code: the runtime must not rely on its manners
            beta()
        return {"mode": "swallows"}
    if branch == "raises":
        raise RuntimeError("branch B fails before reaching alpha")
    return {"mode": "B"}
