"""A move's source stop returns on its new shutdown record (control_plane/fleet/proof.py), never on an earlier stop's
record, and not later than the container's exit. The real stop against Docker and SeaweedFS is in
tests/e2e/test_warm_moves.py."""

from __future__ import annotations

import threading
import time
from typing import Any

from control_plane.drivers.base import Incarnation
from control_plane.fleet import proof

KEY = ("acme", 0, 1)
OLD = {"proven": True, "txid": 5, "finished_at": "2026-11-28T07:00:00.000+00:00"}
NEW = {"proven": True, "txid": 9, "finished_at": "2026-11-28T08:00:00.000+00:00"}


class Source:
    """One container and its record: SIGTERM starts a stop that writes `record` after `writes_after` seconds and
    exits after `exits_after` (None: never, until `stop`)."""

    def __init__(self, record: dict[str, Any] | None, writes_after: float | None, exits_after: float | None) -> None:
        self.status, self.record = "running", OLD
        self.writes = (record, writes_after)
        self.exits_after = exits_after
        self.calls: list[str] = []

    def incarnation(self) -> Incarnation:
        return Incarnation("lf-acme-0-g1", "acme", 0, 1, self.status, 0 if self.status == "exited" else None, None)

    def signal_stop(self, name: str) -> Incarnation | None:
        self.calls.append("signal")
        found = self.incarnation()
        record, after = self.writes
        if after is not None:
            threading.Timer(after, lambda: setattr(self, "record", record)).start()
        if self.exits_after is not None:
            threading.Timer(self.exits_after, lambda: setattr(self, "status", "exited")).start()
        return found

    def inspect(self, name: str) -> Incarnation | None:
        self.calls.append("inspect")
        return self.incarnation()

    def stop(self, name: str, timeout: float) -> Incarnation | None:
        self.calls.append("stop")
        self.status = "exited"
        return self.incarnation()

    def read_shutdown(self, tenant: str, agent: int, generation: int) -> dict[str, Any] | None:
        assert (tenant, agent, generation) == KEY
        return self.record


def stop(source: Source, timeout: float = 5) -> tuple[Incarnation | None, dict[str, Any] | None, float]:
    started = time.monotonic()
    found, record = proof.stop_until_proof(source, source, "lf-acme-0-g1", KEY, timeout, poll=0.01)  # type: ignore[arg-type]
    return found, record, time.monotonic() - started


def test_the_new_record_is_the_proof_before_the_container_exited() -> None:
    source = Source(NEW, writes_after=0.2, exits_after=3)
    found, record, seconds = stop(source)
    assert record == NEW and 0.15 < seconds < 1.0
    assert found is not None and found.status == "running", "returned while the container was still exiting"
    assert "stop" not in source.calls


def test_an_earlier_stop_s_record_is_no_proof() -> None:
    """The container exits without writing a record (killed, its store frozen): the record left by an earlier stop of
    the same generation is not taken for this one's."""
    source = Source(None, writes_after=None, exits_after=0.2)
    found, record, seconds = stop(source)
    assert record is None and found is not None and found.status == "exited"
    assert seconds < 1.5, "noticed by the engine's look, not the timeout"


def test_a_stop_without_a_record_in_time_ends_in_the_engine_s_stop() -> None:
    source = Source(None, writes_after=None, exits_after=None)
    found, record, seconds = stop(source, timeout=0.3)
    assert record is None and source.calls[-1] == "stop" and found is not None and found.status == "exited"
    assert 0.3 <= seconds < 1.5


def test_a_container_that_exited_already_is_not_signalled_and_its_record_is_read() -> None:
    """A re-run after the stop finished: the record in the store is that stop's."""
    source = Source(None, writes_after=None, exits_after=None)
    source.status, source.record = "exited", NEW
    _, record, _ = stop(source)
    assert record == NEW and source.calls == ["signal", "stop"]
