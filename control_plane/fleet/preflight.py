"""Checks an operation makes before it stops anything (DESIGN invariant 7): the object store answers, the engines
of the nodes it touches answer. Each check has its own short deadline (`preflight_timeout`): a frozen store or
engine makes the operation refuse in seconds, with a stable code, instead of stopping an agent whose final sync
would then hang. Checks read only; running them again is harmless."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from control_plane.errors import NodeUnreachable, StoreUnreachable
from control_plane.fleet.incarnations import Fleet

T = TypeVar("T")


class Late(Exception):
    """The call did not answer within its deadline (it keeps running in a daemon thread, and is forgotten)."""


def within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`'s answer, or Late after `seconds`. The call runs in a daemon thread: a client whose own timeouts
    are longer (boto3 retries a frozen store for ~30 s) cannot hold the operation past the deadline."""
    answer: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            answer.append(call())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="litefleet-preflight", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise Late(f"no answer in {seconds:g}s")
    if failure:
        raise failure[0]
    return answer[0]


def store_reachable(fleet: Fleet, tenant: str, ordinal: int = 0) -> None:
    """The store answers a read of the agent's CURRENT marker in time (StoreUnreachable otherwise)."""
    timeout = fleet.settings.preflight_timeout
    try:
        within(timeout, lambda: fleet.storage.read_current(tenant, ordinal))
    except Exception as exc:
        raise StoreUnreachable(
            f"object store does not answer ({type(exc).__name__}: {exc}); nothing was stopped"
        ) from None


def nodes_reachable(fleet: Fleet, names: Iterable[str]) -> None:
    """Each named node's engine answers a ping in time (NodeUnreachable naming the first that does not)."""
    timeout = fleet.settings.preflight_timeout
    for name in sorted(set(names)):
        driver = fleet.driver(fleet.node(name))
        try:
            within(timeout, driver.ping)
        except Exception as exc:
            raise NodeUnreachable(
                f"engine of node {name} does not answer ({type(exc).__name__}: {exc}); nothing was stopped"
            ) from None
