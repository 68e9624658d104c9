"""The warm pool on one node: keep `warm_pool_size` identity-less agent containers started (`refill`), and let a new
agent take one instead of starting cold (`claim`).

A pool container holds nothing of anyone (no identity, no secret, no tenant network, an empty volume): removing
or replacing one never loses anything, so both verbs can be repeated, raced or cut short at any point."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from control_plane.drivers.agent_spec import AgentSpec, PoolSpec
from control_plane.drivers.base import Driver, Incarnation
from control_plane.settings import Settings

log = structlog.get_logger("control_plane.fleet.pool")

_claiming: set[str] = set()  # pool containers a claim of this process is taking right now
_claiming_lock = threading.Lock()


@contextmanager
def _taking(name: str) -> Iterator[bool]:
    """True (and `name` reserved until the block ends) unless another claim of this process is taking it: two
    starts on one node never work on one container (the second's rename would take the first's container)."""
    with _claiming_lock:
        taken = name not in _claiming
        _claiming.add(name)
    try:
        yield taken
    finally:
        if taken:
            with _claiming_lock:
                _claiming.discard(name)


def refill(driver: Driver, settings: Settings, fleet: str, publish_ip: str) -> int:
    """Bring the node's pool to `warm_pool_size` running containers of the current image; returns how many run.

    Safe to re-run: it counts what the engine has each time. Stopped members (a node reboot, an OOM) and members of
    another image (an upgrade) are removed, surplus ones too (two control planes refilling at once, a smaller size);
    then the missing ones are started."""
    members = driver.list_pool(fleet)
    keep = [m for m in members if m.ready and m.image == settings.image][: settings.warm_pool_size]
    with _claiming_lock:
        being_claimed = set(_claiming)
    for member in members:
        if member not in keep and member.name not in being_claimed:
            driver.remove(member.name)
    missing = settings.warm_pool_size - len(keep)
    if missing > 0:
        driver.ensure_image(settings.image)
    for _ in range(missing):
        spec = PoolSpec(
            image=settings.image, fleet=fleet, publish_ip=publish_ip, memory_mb=settings.warm_pool_memory_mb
        )
        driver.start_pool(spec)
    if missing or len(members) != len(keep):
        log.info("pool.refilled", fleet=fleet, started=max(missing, 0), removed=len(members) - len(keep))
    return len(keep) + max(missing, 0)


def claim(driver: Driver, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation | None:
    """`spec`'s incarnation made from a ready pool container of its image, or None (start it cold): no pool, none
    ready, or each claim refused. Only a new agent's start asks (no restore, no follower: `DockerDriver.claim`).
    `complete()`: `spec` with its secrets, asked for only when a container is ready to take them (`Driver.claim`)."""
    if not spec.claimable:
        return None  # the pool runs runc containers with empty volumes: not even worth asking the engine
    members = [m for m in driver.list_pool(spec.fleet) if m.ready and m.image == spec.image]
    for member in members:
        with _taking(member.name) as taken:
            incarnation = driver.claim(member.name, spec, complete) if taken else None
        if incarnation is not None:
            return incarnation
    return None
