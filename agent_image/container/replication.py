"""What a replicated agent does beside serving (and its fence, in `fence`): report replication, prove its last
sync."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from agent_image.container import litestream
from agent_image.container._periodic import Periodic
from agent_image.container.identity import AgentIdentity
from agent_image.container.s3 import S3Error

log = structlog.get_logger("agent_image.replication")


class ReplicationMonitor(Periodic):
    """Replication progress for `/readyz` and `/metrics`, probed with `litestream sync -wait` every
    max(5 s, sync interval): never more often than Litestream syncs anyway, so probing adds no PUTs."""

    def __init__(self, identity: AgentIdentity) -> None:
        self.identity = identity
        self._status: dict[str, Any] = {"local_txid": None, "replica_txid": None, "last_error": None}
        self._caught_up_at: float | None = None
        super().__init__("litefleet-replication", max(5.0, identity.sync_interval), self.probe, immediately=True)

    def probe(self) -> None:
        try:
            result = litestream.sync_wait(
                self.identity.socket_path, self.identity.db_path, timeout=min(30.0, self.interval * 2)
            )
        except (litestream.LitestreamError, ValueError) as exc:
            self._status["last_error"] = str(exc)
            log.warning("replication.probe_failed", error=str(exc))
            return
        if result.caught_up:
            self._caught_up_at = time.time()
        self._status = {"local_txid": result.txid, "replica_txid": result.replica_txid, "last_error": None}

    def status(self) -> dict[str, Any]:
        status = dict(self._status)
        local, replica = status["local_txid"], status["replica_txid"]
        status["lag_txids"] = None if local is None or replica is None else local - replica
        status["last_sync_at"] = _iso(self._caught_up_at) if self._caught_up_at else None
        status["seconds_since_sync"] = round(time.time() - self._caught_up_at, 3) if self._caught_up_at else None
        return status


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
