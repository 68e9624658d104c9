"""What a replicated agent does beside serving (and its fence, in `fence`): report replication, prove its last
sync."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from agent_image._errors import ReplicationUnconfirmed
from agent_image._phases import mark
from agent_image.container import litestream
from agent_image.container._periodic import Periodic
from agent_image.container.identity import AgentIdentity
from agent_image.container.s3 import S3Error

log = structlog.get_logger("agent_image.replication")


STALL_PROBES = 3  # no successful probe for this many probe intervals (or a failing probe): `stalled`
LAG_PROBES = 2  # probes succeed but the replica has not caught up for this many intervals: `lagging`

Sync = Callable[[float], litestream.SyncResult]


def socket_sync(identity: AgentIdentity) -> Sync:
    """`litestream sync -wait` through the running `replicate`'s control socket (the real probe)."""
    return lambda timeout: litestream.sync_wait(identity.socket_path, identity.db_path, timeout=timeout)


class ReplicationMonitor(Periodic):
    """Replication progress for `/readyz` and `/metrics`, probed with `litestream sync -wait` every
    max(5 s, sync interval): never more often than Litestream syncs anyway, so probing adds no PUTs.

    `state`: `ok` (the last probe succeeded and the replica caught up recently), `lagging` (probes succeed but
    writes keep outrunning the replica for > LAG_PROBES intervals), `stalled` (the last probe failed, or none
    succeeded for > STALL_PROBES intervals: nothing new reaches the store).

    `unconfirmed_commits`: transactions the runtime committed (`commits`, its own count) that no successful sync
    has confirmed yet: the commits counted before a probe's `sync -wait` began are confirmed once it answers
    caught up. It grows while the store is frozen, when Litestream's own txids stand still (it writes no local
    LTX while it cannot upload). `sync`, `commits` and `clock` are injectable."""

    def __init__(
        self,
        identity: AgentIdentity,
        *,
        sync: Sync | None = None,
        commits: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self._sync = sync or socket_sync(identity)
        self._commits = commits
        self._confirmed_commits = 0
        self._clock = clock
        self._status: dict[str, Any] = {"local_txid": None, "replica_txid": None, "last_error": None}
        self._started_at = clock()
        self._caught_up_at: float | None = None
        self._probed_ok_at: float | None = None
        self._last_probe_failed = False
        super().__init__("litefleet-replication", max(5.0, identity.sync_interval), self.probe, immediately=True)

    def probe(self) -> None:
        committed = self._commits() if self._commits is not None else 0
        try:
            result = self._sync(min(30.0, self.interval * 2))
        except (litestream.LitestreamError, ValueError, OSError) as exc:
            self._status["last_error"] = str(exc)
            self._last_probe_failed = True
            log.warning("replication.probe_failed", error=str(exc))
            return
        now = self._clock()
        if self._probed_ok_at is None:
            mark("first_sync_probe", txid=result.txid, replica_txid=result.replica_txid)
        self._probed_ok_at, self._last_probe_failed = now, False
        if result.caught_up:
            self._caught_up_at = now
            self._confirmed_commits = max(self._confirmed_commits, committed)
        self._status = {"local_txid": result.txid, "replica_txid": result.replica_txid, "last_error": None}

    def state(self) -> str:
        now = self._clock()
        if self._last_probe_failed:
            return "stalled"
        if now - (self._probed_ok_at or self._started_at) > STALL_PROBES * self.interval:
            return "stalled"
        if now - (self._caught_up_at or self._started_at) > LAG_PROBES * self.interval:
            return "lagging"
        return "ok"

    def status(self) -> dict[str, Any]:
        status = dict(self._status)
        now = self._clock()
        local, replica = status["local_txid"], status["replica_txid"]
        status["state"] = self.state()
        status["lag_txids"] = None if local is None or replica is None else local - replica
        status["last_sync_at"] = _iso(self._caught_up_at) if self._caught_up_at else None
        status["seconds_since_sync"] = round(now - self._caught_up_at, 3) if self._caught_up_at else None
        status["seconds_since_probe_ok"] = round(now - self._probed_ok_at, 3) if self._probed_ok_at else None
        if self._commits is not None:
            status["unconfirmed_commits"] = max(0, self._commits() - self._confirmed_commits)
        return status


class ReplicationConfirmer:
    """`confirm(timeout)`: returns once the replica holds every transaction committed before the call.

    A confirmation needs a sync that *started* after the caller's commit: the first `sync -wait` whose answer
    shows `replica_txid >= txid` (txid being the local position when that sync began), or a second sync when
    new writes outran the first. Concurrent callers share syncs (one runs at a time; everyone who arrived while
    it ran waits for the next one), so N replicated starts cost a few `litestream sync` calls, not N.
    Raises ReplicationUnconfirmed. Safe to call again: it only asks Litestream to sync."""

    def __init__(self, sync: Sync) -> None:
        self._sync = sync
        self._cond = threading.Condition()
        self._started = 0  # syncs begun so far (sequence numbers)
        self._confirmed = 0  # the highest sequence number whose sync succeeded
        self._failed: tuple[int, str] = (0, "")  # the last failed sequence number and its error
        self._running = False

    def confirm(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            need = self._started + 1  # a sync that begins after this moment
            while self._confirmed < need:
                if self._failed[0] >= need:  # a sync cut short by our deadline is a timeout (504), else 503
                    late = time.monotonic() >= deadline
                    raise ReplicationUnconfirmed(f"the replica did not confirm: {self._failed[1]}", timed_out=late)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReplicationUnconfirmed(f"the replica did not confirm within {timeout:g}s", timed_out=True)
                if self._running:
                    self._cond.wait(remaining)
                    continue
                self._running = True
                self._started += 1
                sequence = self._started
                self._cond.release()
                try:
                    error = self._one(deadline)
                finally:
                    self._cond.acquire()
                    self._running = False
                if error is None:
                    self._confirmed = max(self._confirmed, sequence)
                else:
                    self._failed = (sequence, error)
                self._cond.notify_all()

    def _one(self, deadline: float) -> str | None:
        """Run one confirmation; None when the replica holds everything committed before it began."""
        try:
            first = self._sync(max(0.1, deadline - time.monotonic()))
            if first.replica_txid >= first.txid:
                return None
            second = self._sync(max(0.1, deadline - time.monotonic()))  # began after the first: covers its txid
            if second.replica_txid >= first.txid:
                return None
            return f"the replica is at txid {second.replica_txid}, it needs {first.txid}"
        except (litestream.LitestreamError, ValueError, OSError) as exc:
            return str(exc)


@dataclass(frozen=True)
class ShutdownRecord:
    """How an incarnation stopped; written to `gen-g/shutdown.json` for the control plane to read."""

    tenant: str
    agent: int
    generation: int
    reason: str  # "stopped" (SIGTERM) or "superseded"
    proven: bool  # replica txid == local txid after the database was closed
    txid: int | None
    replica_txid: int | None
    error: str | None
    finished_at: str


def final_sync(identity: AgentIdentity, reason: str, timeout: float = 60.0) -> ShutdownRecord:
    """After the runtime closed the database: force Litestream's last sync, check the replica holds the local
    txid, and write the record next to the replica. Re-running is safe: no new writes, same txid, same record."""
    txid = replica_txid = None
    error = None
    try:
        result = litestream.sync_wait(identity.socket_path, identity.db_path, timeout=timeout)
        txid, replica_txid = result.txid, result.replica_txid
        if not result.caught_up:
            error = f"replica is at txid {replica_txid}, the database at {txid}"
    except (litestream.LitestreamError, ValueError) as exc:
        error = str(exc)
    record = ShutdownRecord(
        identity.tenant,
        identity.agent,
        identity.generation,
        reason,
        error is None,
        txid,
        replica_txid,
        error,
        _iso(time.time()),
    )
    try:
        identity.s3().put(identity.bucket, identity.shutdown_key, json.dumps(asdict(record)).encode())
    except (OSError, S3Error) as exc:
        log.error("shutdown.record_not_written", error=str(exc))
        if record.proven:  # the replica may be fine, but nobody can know it: not proven
            record = ShutdownRecord(**{**asdict(record), "proven": False, "error": f"record not written: {exc}"})
    log.info("shutdown.final_sync", **asdict(record))
    return record


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")
