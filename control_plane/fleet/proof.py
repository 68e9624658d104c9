"""A move's source stop, done when its proof is in the store rather than when its container has exited.

The agent's stop writes its shutdown record (`shutdown.json` next to its replica) only after its server stopped, its
database closed and Litestream's final sync was checked: that record is the proof a move waits for. After it the
container still has to exit (Litestream's own shutdown, the engine's teardown of the container: 0.2-1 s here, more
under load), which no step of the cutover needs: the successor is fenced by CURRENT and starts from the proven txid.

A record already in the store may be an earlier stop's (a generation restarted in place after a rollback), so only a
record that differs from the one read before the signal counts (its `finished_at` is the new stop's)."""

from __future__ import annotations

import time
from typing import Any

from control_plane.drivers.base import Driver, Incarnation
from control_plane.storage.ports import ReplicaStore

INSPECT_EVERY = 0.5  # seconds between asking the engine whether the container exited without a new record


def stop_until_proof(
    driver: Driver,
    storage: ReplicaStore,
    name: str,
    incarnation: tuple[str, int, int],
    timeout: float,
    *,
    poll: float = 0.03,
) -> tuple[Incarnation | None, dict[str, Any] | None]:
    """SIGTERM the container `name` of `incarnation` (tenant, ordinal, generation) and return once its new shutdown
    record is in the store (the container may still be exiting). Returns what the engine said and that record, or
    None for the record when the container exited without writing one, or did not within `timeout` (then it was
    stopped with `driver.stop`: SIGKILL). A container that was not running is stopped as `driver.stop` does and its
    record read as it is (a re-run after the stop finished). Re-running is safe: nothing is written here."""
    before = storage.read_shutdown(*incarnation)
    signalled = driver.signal_stop(name)
    if signalled is None or signalled.status != "running":  # gone, exited, or paused: the blocking stop's cases
        return driver.stop(name, timeout=timeout), storage.read_shutdown(*incarnation)

    def fresh() -> dict[str, Any] | None:
        record = storage.read_shutdown(*incarnation)
        return record if record is not None and record != before else None

    deadline = time.monotonic() + timeout
    next_inspect = time.monotonic() + INSPECT_EVERY
    while time.monotonic() < deadline:
        if (record := fresh()) is not None:
            return signalled, record
        if time.monotonic() >= next_inspect:
            found = driver.inspect(name)
            if found is None or found.status != "running":  # exited: the record is there now or never
                return found, fresh()
            next_inspect = time.monotonic() + INSPECT_EVERY
        time.sleep(poll)
    return driver.stop(name, timeout=1), fresh()
