"""Replication lag measured against the store, not the agent's own view (issue 11, "honest loss accounting").

Every `interval` the sampler lists each running agent's replica in object storage (its newest txid, the same LTX
names `ObjectStorage.replica_position` reads) and compares it with the last local txid the agent reported to the
health monitor (its `/readyz`, recorded on its row). From the two it keeps `synced_at`: the newest moment known to
be covered by the replica. When the agent reported local txid L at probe time p, having last seen its replica
caught up S seconds before (`seconds_since_sync`), every write it acknowledged before p - S has a txid <= L; once
the store itself lists a txid >= L, all of them are in the replica. Writes acknowledged after `synced_at` may be
missing from it, which is what `lag_seconds` (now - synced_at) and a fail-over report say.

A frozen store cannot confirm anything: its LISTs hang (they run on a small pool, at most one per agent at a
time, so the tick itself never waits), `synced_at` stops moving, and the agent becomes `lagging`, then `stalled`,
whatever the agent believes. The state, the store's txid and `synced_at` are written on the agent's row (only
while it still runs the generation that was measured), so the API, `/metrics` and the dashboard read one
measurement."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import Agent, AgentState, ReplicationState
from control_plane.storage.ports import ReplicaStore

log = structlog.get_logger("control_plane.observer")


@dataclass(frozen=True)
class LagThresholds:
    lagging_after: float = 20.0  # seconds without a confirmed sync: lagging
    stalled_after: float = 45.0  # seconds without a confirmed sync: stalled

    def __post_init__(self) -> None:
        if not 0 < self.lagging_after <= self.stalled_after:
            raise ValueError("replication thresholds must satisfy 0 < lagging_after <= stalled_after")


@dataclass(frozen=True)
class Report:
    """What the agent last told the health monitor (its row): local txid at `probed_at`, caught up `since_sync`
    seconds before that."""

    local_txid: int | None
    probed_at: float | None
    since_sync: float | None
    ready: bool | None = None  # False: the last probe got no answer (the other fields are older) or not ready


@dataclass(frozen=True)
class Assessment:
    state: ReplicationState
    note: str | None


def confirmed_at(report: Report, store_txid: int) -> float | None:
    """The moment before which every write of the agent is in a replica listing `store_txid`, or None when this
    report proves nothing (no report yet, or the replica does not hold the reported local txid)."""
    if report.local_txid is None or report.probed_at is None or report.since_sync is None:
        return None
    if report.ready is False:  # an unanswered probe moves probed_at but leaves the rest as it was: prove nothing
        return None
    if store_txid < report.local_txid:
        return None
    return report.probed_at - report.since_sync


def assess(
    now: float,
    *,
    report: Report,
    store_txid: int | None,
    store_checked_at: float | None,
    synced_at: float | None,
    watched_since: float,
    error: str | None,
    thresholds: LagThresholds,
) -> Assessment:
    """The replication state of a running agent. The clock runs from its last confirmed sync (or, never
    confirmed, from when it was first watched running): past `stalled_after` it is stalled, past
    `lagging_after` lagging; unknown while nothing has been measured or the agent never reported a txid."""
    if report.local_txid is None:
        return Assessment(ReplicationState.unknown, "the agent has not reported its local txid yet")
    age = now - (synced_at if synced_at is not None else watched_since)
    if age <= thresholds.lagging_after:
        if synced_at is None:
            return Assessment(ReplicationState.unknown, "no sync confirmed by the store yet")
        return Assessment(ReplicationState.ok, None)
    state = ReplicationState.stalled if age > thresholds.stalled_after else ReplicationState.lagging
    since = "ever" if synced_at is None else f"{age:.0f}s"
    if store_checked_at is None or now - store_checked_at > thresholds.lagging_after:
        unread = "never" if store_checked_at is None else f"not for {now - store_checked_at:.0f}s"
        why = error or "a read still pending"
        return Assessment(state, f"no sync confirmed for {since}: the store answered {unread} ({why})")
    behind = 0 if store_txid is None else max(0, report.local_txid - store_txid)
    return Assessment(state, f"no sync confirmed for {since}: the replica is at txid {store_txid}, {behind} behind")


@dataclass
class _Watched:
    generation: int
    since: float  # when this process first saw the generation running
    store_txid: int | None = None
    checked_at: float | None = None
    synced_at: float | None = None
    error: str | None = None
    pending: Future[tuple[int, float]] | None = None
    written: tuple[Any, ...] | None = None  # the values last written to the row


class LagSampler:
    """Measures every running agent's replication against the store, every `interval` seconds (`tick`).

    `tick` is safe to run at any time and from several control planes: it only reads the store and writes the
    measurement on rows still at the measured generation; a second run measures again."""

    def __init__(
        self,
        engine: Engine,
        storage: ReplicaStore,
        thresholds: LagThresholds,
        *,
        concurrency: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.thresholds = thresholds
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="litefleet-lag")
        self._watched: dict[str, _Watched] = {}

    def wait(self, timeout: float = 5.0) -> None:
        """Wait (up to `timeout`) for the reads started so far: tests, and a caller that wants a fresh round."""
        pending = [w.pending for w in self._watched.values() if w.pending is not None]
        futures.wait(pending, timeout=timeout)

    def close(self) -> None:
        """Stop taking new reads; a LIST hanging on a frozen store is left to its own timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> dict[str, ReplicationState]:
        """One round: collect the reads that finished, start one for every agent with none running, assess and
        write. Returns each running agent's state (for tests and logs)."""
        with Session(self.engine) as session:
            rows = list(
                session.exec(select(Agent).where(Agent.state == AgentState.running).where(Agent.generation > 0))
            )
        now = self._clock()
        states: dict[str, ReplicationState] = {}
        writes: list[tuple[str, int, dict[str, Any]]] = []
        for row in rows:
            agent_id, tenant, ordinal, generation = row.id, row.tenant, row.ordinal, row.generation
            report = Report(row.local_txid, row.probed_at, row.seconds_since_sync, row.ready)
            watched = self._watch(row, now)
            self._collect(agent_id, watched, report)
            if watched.pending is None:
                watched.pending = self._pool.submit(self._read, tenant, ordinal, generation)
            found = assess(
                now,
                report=report,
                store_txid=watched.store_txid,
                store_checked_at=watched.checked_at,
                synced_at=watched.synced_at,
                watched_since=watched.since,
                error=watched.error,
                thresholds=self.thresholds,
            )
            states[agent_id] = found.state
            values = (watched.store_txid, watched.checked_at, watched.synced_at, found.state.value, found.note)
            if values != watched.written:
                writes.append((agent_id, generation, dict(zip(_COLUMNS, values, strict=True))))
                if watched.written is None or watched.written[3] != found.state.value:
                    log.info(
                        "replication.state",
                        tenant=tenant,
                        agent=ordinal,
                        generation=generation,
                        state=found.state.value,
                        note=found.note,
                    )
                watched.written = values
        for gone in set(self._watched) - {row.id for row in rows}:
            del self._watched[gone]
        self._write(writes, now)
        return states

    def _watch(self, row: Agent, now: float) -> _Watched:
        watched = self._watched.get(row.id)
        if watched is not None and watched.generation == row.generation:
            return watched
        watched = self._watched[row.id] = _Watched(row.generation, now)
        # measured by an earlier run (another process, or before a restart) at this generation: carry it on
        if row.lag_sampled_at is not None and row.lag_sampled_at >= row.updated_at:
            watched.store_txid, watched.checked_at, watched.synced_at = (
                row.store_txid,
                row.store_checked_at,
                row.synced_at,
            )
            if row.synced_at is not None:
                watched.since = min(now, row.synced_at)
        return watched

    def _collect(self, agent_id: str, watched: _Watched, report: Report) -> None:
        pending = watched.pending
        if pending is None or not pending.done():
            return
        watched.pending = None
        try:
            store_txid, read_at = pending.result()
        except Exception as exc:  # a frozen or failing store: nothing confirmed, the clock keeps running
            watched.error = f"{type(exc).__name__}: {exc}"[:200]
            log.info("replication.store_unreadable", agent=agent_id, error=watched.error)
            return
        watched.store_txid, watched.checked_at, watched.error = store_txid, read_at, None
        # Reports from before this process watched the generation may be the previous generation's.
        if report.probed_at is not None and report.probed_at < watched.since - 1.0 and watched.synced_at is None:
            return
        confirmed = confirmed_at(report, store_txid)
        if confirmed is not None and (watched.synced_at is None or confirmed > watched.synced_at):
            watched.synced_at = min(confirmed, read_at)

    def _read(self, tenant: str, ordinal: int, generation: int) -> tuple[int, float]:
        txid, _ = self.storage.replica_position(tenant, ordinal, generation)
        return txid, self._clock()

    def _write(self, writes: list[tuple[str, int, dict[str, Any]]], now: float) -> None:
        """All of a tick's changes in one statement executed for many rows (one transaction)."""
        if not writes:
            return
        table = Agent.__table__  # type: ignore[attr-defined]
        statement = (
            update(table)
            .where(table.c.id == bindparam("_id"))
            .where(table.c.generation == bindparam("_generation"))
            .where(table.c.state == AgentState.running)
            .values({name: bindparam(name) for name in (*_COLUMNS, "lag_sampled_at")})
        )
        rows = [
            {"_id": agent_id, "_generation": generation, **values, "lag_sampled_at": now}
            for agent_id, generation, values in writes
        ]
        with self.engine.begin() as connection:
            connection.execute(statement, rows)


_COLUMNS = ("store_txid", "store_checked_at", "synced_at", "replication", "replication_note")
