"""The observer: read-only copies of agents' databases, made from their replicas in object storage.

It never calls an agent. Three kinds of copy, each answer saying which one it came from and how fresh it is:

  follow    a live copy kept by `litestream restore -f` (one process per followed agent, at most
            `max_followers` of them): new transactions show up about sync interval + follow interval after
            their commit.
  periodic  followed agents beyond the cap are restored in full every `periodic_interval` seconds (no process
            stays up); the most active of them are promoted to live followers when the least active follower
            has gone quiet.
  snapshot  an on-demand restore of any generation at any time (`-timestamp`) or transaction (`-txid`), cached
            under `cache_dir`; a hibernated or retired agent is read this way.

Copies are read through SQLite only, read-only: a live copy with `mode=ro` and a fresh connection per query
(Litestream applies each LTX file under an exclusive lock on the file, so a reader sees whole transactions, and
a connection left open would block the follower); periodic and snapshot copies are files nobody writes again
(a new restore is renamed over the old file), opened with `immutable=1`.

Typical use (the control plane holds one Observer for its lifetime):

    observer = Observer(storage, ObserverSettings(cache_dir=...), credentials=(key, secret))
    observer.start()                               # background upkeep: restarts, periodic restores, rebalance
    observer.follow("acme", 0, 3)                  # generation 3 of acme's agent 0
    observer.workflows("acme", 0)                  # from the live copy (or a snapshot when not followed)
    observer.workflows("acme", 0, at=yesterday)    # point in time
    observer.problems()                            # ERROR/BLOCKED across followed agents
    observer.close()                               # stops every litestream it started, by pid
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import apsw
import structlog

from agent_image.container import litestream
from control_plane.storage import ObjectStorage

__all__ = [
    "PROBLEM_STATUSES",
    "AgentRef",
    "AgentWorkflow",
    "CopyKind",
    "CopyUnreadable",
    "EventRecord",
    "FollowState",
    "Freshness",
    "LogEntry",
    "NoStateAt",
    "Observer",
    "ObserverError",
    "ObserverSettings",
    "ProblemReport",
    "ReplicaNotFound",
    "Source",
    "StepRecord",
    "Unavailable",
    "WorkflowDetail",
    "WorkflowError",
    "WorkflowInfo",
    "WorkflowList",
    "WorkflowNotInCopy",
]

log = structlog.get_logger("control_plane.observer")

T = TypeVar("T")

ERROR, BLOCKED = "ERROR", "BLOCKED"
PROBLEM_STATUSES = (ERROR, BLOCKED)
KNOWN_SCHEMA_VERSION = 1  # agent_image.store.SCHEMA_VERSION when this module was written
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_STATE_COLUMNS = (
    "id, name, status, inputs, output, error, parent_id, queue, bundle_version, blocked_reason, forked_from, "
    "created_at, updated_at"
)


# -- errors ---------------------------------------------------------------------------------------------------------


class ObserverError(Exception):
    code = "observer_error"


class ReplicaNotFound(ObserverError):
    """No replica (or no generation) in object storage for this agent."""

    code = "replica_not_found"


class NoStateAt(ObserverError):
    """The replica holds nothing at or before the requested time or transaction."""

    code = "no_state_at"


class WorkflowNotInCopy(ObserverError):
    code = "workflow_not_found"


class CopyUnreadable(ObserverError):
    code = "copy_unreadable"


# -- typed answers --------------------------------------------------------------------------------------------------


class CopyKind(StrEnum):
    follow = "follow"
    periodic = "periodic"
    snapshot = "snapshot"


@dataclass(frozen=True, order=True)
class AgentRef:
    tenant: str
    agent: int
    generation: int

    def __str__(self) -> str:
        return f"{self.tenant}/{self.agent}/gen-{self.generation}"


@dataclass(frozen=True)
class Freshness:
    """How current a copy is. `txid`: the copy holds at least this transaction of the replica. `applied_at`: when
    the copy last changed (follow: last applied update; periodic/snapshot: when it was restored). The replica
    fields say what object storage held when it was last compared with the copy, at `checked_at` (queries with
    `check_replica=True`, snapshots, and every periodic pass): `seconds_behind` is then 0 when the copy had the
    replica's newest transaction, else how long the oldest transaction the copy lacks had been in the replica.
    None: unknown. (What the agent committed but has not synced yet is invisible here: see replication lag.)"""

    txid: int
    applied_at: dt.datetime | None
    as_of: dt.datetime | None = None  # snapshots at a point in time: the requested time
    replica_txid: int | None = None
    replica_written_at: dt.datetime | None = None  # when the replica's newest transaction was uploaded
    seconds_behind: float | None = None
    checked_at: dt.datetime | None = None

    @property
    def caught_up(self) -> bool | None:
        return None if self.replica_txid is None else self.txid >= self.replica_txid


@dataclass(frozen=True)
class Source:
    """Where an answer came from: which generation's replica, which kind of copy, and how fresh it is."""

    ref: AgentRef
    kind: CopyKind
    freshness: Freshness
    schema_version: int

    @property
    def tenant(self) -> str:
        return self.ref.tenant

    @property
    def agent(self) -> int:
        return self.ref.agent

    @property
    def generation(self) -> int:
        return self.ref.generation


@dataclass(frozen=True)
class WorkflowError:
    type: str
    message: str

    @classmethod
    def parse(cls, text: str | None) -> WorkflowError | None:
        if text is None:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return cls("Unparseable", text[:500])
        if isinstance(value, dict):
            return cls(str(value.get("type", "Error")), str(value.get("message", "")))
        return cls("Error", str(value)[:500])


@dataclass(frozen=True)
class WorkflowInfo:
    """One row of the agent's `workflow_state`. JSON values stay JSON text (`*_json`); `.result`/`.inputs`
    decode them."""

    id: str
    name: str
    status: str
    created_at: dt.datetime
    updated_at: dt.datetime
    result_json: str | None
    error: WorkflowError | None
    blocked_reason: str | None
    parent_id: str | None
    queue: str | None
    bundle_version: str
    forked_from: str | None
    inputs_json: str

    @property
    def result(self) -> Any:
        return None if self.result_json is None else json.loads(self.result_json)

    @property
    def inputs(self) -> Any:
        return json.loads(self.inputs_json)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkflowInfo:
        return cls(
            id=row[0],
            name=row[1],
            status=row[2],
            inputs_json=row[3],
            result_json=row[4],
            error=WorkflowError.parse(row[5]),
            parent_id=row[6],
            queue=row[7],
            bundle_version=row[8],
            blocked_reason=row[9],
            forked_from=row[10],
            created_at=_utc(row[11]),
            updated_at=_utc(row[12]),
        )


@dataclass(frozen=True)
class StepRecord:
    """One durable operation of a workflow (step, sleep, message, event, child), as `Runtime.steps` lists them."""

    seq: int
    kind: str
    name: str | None
    output_json: str | None
    error: WorkflowError | None
    attempts: int | None
    started_at: dt.datetime | None
    finished_at: dt.datetime


@dataclass(frozen=True)
class LogEntry:
    """One row of the append-only `execution_log` (transitions included: created, status)."""

    lsn: int
    seq: int | None
    kind: str
    name: str | None
    value_json: str | None
    error: WorkflowError | None
    at: dt.datetime


@dataclass(frozen=True)
class EventRecord:
    key: str
    value_json: str
    at: dt.datetime


@dataclass(frozen=True)
class WorkflowList:
    source: Source
    workflows: list[WorkflowInfo]
    counts: dict[str, int]  # status -> number of workflows in the copy (all of them, not only the listed page)


@dataclass(frozen=True)
class WorkflowDetail:
    source: Source
    workflow: WorkflowInfo
    steps: list[StepRecord]
    events: list[EventRecord]
    log: list[LogEntry]

    @property
    def errors(self) -> list[LogEntry]:
        return [entry for entry in self.log if entry.error is not None]


@dataclass(frozen=True)
class AgentWorkflow:
    source: Source
    workflow: WorkflowInfo


@dataclass(frozen=True)
class Unavailable:
    ref: AgentRef
    reason: str


@dataclass(frozen=True)
class ProblemReport:
    """Workflows in the asked statuses across every followed agent; agents whose copy could not be read are
    listed in `unavailable`, never silently left out."""

    workflows: list[AgentWorkflow]
    unavailable: list[Unavailable]
    agents_checked: int


@dataclass(frozen=True)
class FollowState:
    ref: AgentRef
    kind: CopyKind  # follow (a live litestream process) or periodic
    pid: int | None
    ready: bool
    txid: int | None
    applied_at: dt.datetime | None
    last_used: dt.datetime
    last_change: dt.datetime | None
    restarts: int
    last_error: str | None


@dataclass(frozen=True)
class ObserverSettings:
    cache_dir: Path
    max_followers: int = 32  # live `restore -f` processes at once (~20 MiB RSS each); the rest are periodic
    follow_interval: float = 1.0  # seconds between a follower's polls (each poll is a LIST: S3 request cost)
    periodic_interval: float = 30.0  # seconds between full restores of a followed agent beyond the cap
    periodic_concurrency: int = 2  # periodic restores running at once
    tick: float = 1.0  # seconds between upkeep passes (restarts, periodic restores, rebalance)
    rebalance_margin: float = 10.0  # a periodic agent replaces a follower only if it was active this much later
    rebalance_interval: float = 10.0  # at most one follower swap per this many seconds
    snapshot_cache: int = 64  # snapshot files kept (least recently used removed first)
    restore_timeout: float = 300.0
    integrity_check: str = "quick"  # for snapshot and periodic restores: none, quick, full
    stop_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_followers < 0:
            raise ValueError("max_followers must be >= 0")
        if self.integrity_check not in ("none", "quick", "full"):
            raise ValueError("integrity_check must be none, quick or full")


# -- the observer ---------------------------------------------------------------------------------------------------


@dataclass
class _Tracked:
    ref: AgentRef
    copy: Path
    log_path: Path
    kind: CopyKind = CopyKind.periodic
    process: subprocess.Popen[bytes] | None = None
    last_used: float = field(default_factory=time.time)
    last_change: float | None = None  # when the copy last received a new transaction
    txid: int | None = None
    restored_at: float | None = None  # periodic: when the current file was restored
    next_restore: float = 0.0
    restoring: bool = False
    restarts: int = 0
    last_error: str | None = None
    next_start: float = 0.0  # follow: earliest restart after a crash (backoff)
    standby: tuple[Path, int, float] | None = None  # a promoted agent's periodic copy until its follower is ready
    checked: tuple[int, float] | None = None  # periodic: the replica's txid at the last pass, and when


@dataclass
class _Snapshot:
    path: Path
    source: Source
    used: float


class Observer:
    """Read-only copies of agents' databases from their replicas. Thread-safe; every litestream process it
    starts is recorded by pid (under `cache_dir/pids`) and stopped by pid in `close()` (and, after a crash of
    the process that owned them, by the next Observer on the same cache_dir)."""

    def __init__(
        self, storage: ObjectStorage, settings: ObserverSettings, *, credentials: tuple[str, str] | None = None
    ) -> None:
        self.storage = storage
        self.settings = settings
        # A read-only key scoped to the fleet's tenants is enough (Read + List); by default the storage's own.
        self._credentials = credentials if credentials is not None else storage._credentials
        self._lock = threading.RLock()
        self._tracked: dict[AgentRef, _Tracked] = {}
        self._restores: set[subprocess.Popen[str]] = set()  # one-off restores running now
        self._last_swap = 0.0
        self._snapshots: dict[tuple[Any, ...], _Snapshot] = {}
        self._snapshot_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Due periodic restores, first due first out, served by `periodic_concurrency` worker threads.
        self._restore_queue: queue.SimpleQueue[_Tracked | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self.root = settings.cache_dir.resolve()
        for sub in ("follow", "periodic", "snapshots", "configs", "logs", "pids", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._reap_leftovers()
        # A follow copy is only ever reused by its own process: start clean.
        for sub in ("follow", "tmp"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the upkeep thread (restart crashed followers, periodic restores, promote/demote). Idempotent."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._loop, name="litefleet-observer", daemon=True)
            self._thread.start()
            for index in range(max(1, self.settings.periodic_concurrency)):
                worker = threading.Thread(target=self._restore_worker, name=f"litefleet-observer-{index}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def close(self) -> None:
        """Stop the upkeep thread and every litestream process this observer started. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            thread = self._thread
        with self._lock:
            followers = [t.process for t in self._tracked.values() if t.process is not None]
            processes: list[subprocess.Popen[Any]] = [*followers, *self._restores]
            # SIGTERM all at once, then wait: closing 100 followers costs one stop_timeout at most, not 100.
            for process in processes:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.settings.stop_timeout
            for process in processes:
                _terminate(process, max(0.1, deadline - time.monotonic()))
            for tracked in self._tracked.values():
                self._stop_process(tracked)
        for _ in self._workers:
            self._restore_queue.put(None)
        for worker in [thread, *self._workers]:
            if worker is not None:
                worker.join(timeout=self.settings.stop_timeout)
        log.info("observer.closed")

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- following ------------------------------------------------------------------------------------------------

    def follow(self, tenant: str, agent: int, generation: int) -> FollowState:
        """Keep a read-only copy of this generation's replica: a live follower while fewer than `max_followers`
        run, else a periodic restore. Following a newer generation of an agent unfollows its older ones (their
        replicas no longer change; `snapshot` still reads them). Idempotent: following a followed agent only
        marks it as used."""
        ref = _ref(tenant, agent, generation)
        with self._lock:
            self._check_open()
            tracked = self._tracked.get(ref)
            if tracked is None:
                for older in [
                    r
                    for r in self._tracked
                    if (r.tenant, r.agent) == (ref.tenant, ref.agent) and r.generation < generation
                ]:
                    self.unfollow(older.tenant, older.agent, older.generation)
                key = _key(ref)
                tracked = _Tracked(ref, self.root / "periodic" / f"{key}.db", self.root / "logs" / f"{key}.log")
                self._tracked[ref] = tracked
                if self._live_count() < self.settings.max_followers:
                    self._start_follower(tracked)
                log.info("observer.follow", tenant=tenant, agent=agent, generation=generation, kind=tracked.kind)
            tracked.last_used = time.time()
            return self._state(tracked)

    def unfollow(self, tenant: str, agent: int, generation: int | None = None) -> int:
        """Stop following (every generation of the agent when `generation` is None) and delete the copies.
        Returns how many were followed; unfollowing what is not followed is harmless (returns 0)."""
        with self._lock:
            refs = [
                ref
                for ref in self._tracked
                if ref.tenant == tenant and ref.agent == agent and generation in (None, ref.generation)
            ]
            for ref in refs:
                tracked = self._tracked.pop(ref)
                self._stop_process(tracked)
                _remove_copy(tracked.copy)
                log.info("observer.unfollow", tenant=ref.tenant, agent=ref.agent, generation=ref.generation)
            return len(refs)

    def followed(self) -> list[FollowState]:
        with self._lock:
            return [self._state(tracked) for tracked in sorted(self._tracked.values(), key=lambda t: t.ref)]

    def follow_state(self, tenant: str, agent: int, generation: int) -> FollowState | None:
        with self._lock:
            tracked = self._tracked.get(AgentRef(tenant, agent, generation))
            return None if tracked is None else self._state(tracked)

    def wait_ready(self, tenant: str, agent: int, generation: int, timeout: float = 30.0) -> FollowState:
        """Wait until the followed agent's copy exists (first restore done); raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.follow_state(tenant, agent, generation)
            if state is None:
                raise ObserverError(f"{tenant}/{agent}/gen-{generation} is not followed")
            if state.ready:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"copy of {tenant}/{agent}/gen-{generation} not ready after {timeout}s")
            if state.kind is CopyKind.periodic and self._thread is None:
                self.refresh(tenant, agent, generation)
            time.sleep(0.05)

    def refresh(self, tenant: str, agent: int, generation: int) -> FollowState:
        """Restore a periodically-copied agent now (a live follower needs nothing: returns its state)."""
        ref = AgentRef(tenant, agent, generation)
        with self._lock:
            tracked = self._tracked.get(ref)
            if tracked is None:
                raise ObserverError(f"{ref} is not followed")
            if tracked.kind is CopyKind.follow or tracked.restoring:
                return self._state(tracked)
            tracked.restoring = True
        self._periodic_restore(tracked)
        with self._lock:
            return self._state(tracked)

    # -- snapshots ------------------------------------------------------------------------------------------------

    def snapshot(
        self,
        tenant: str,
        agent: int,
        *,
        at: dt.datetime | None = None,
        txid: int | None = None,
        generation: int | None = None,
    ) -> Source:
        """Restore the agent's database as of `at` (or transaction `txid`, or the newest) into the cache and
        return where it came from. `generation` None: the generation that was writing at `at` (the newest
        whose replica began at or before it), or CURRENT's for the newest state. Cached: asking again for the
        same point costs nothing (for the newest state: while the replica has not moved)."""
        return self._snapshot(tenant, agent, at=at, txid=txid, generation=generation).source

    def _snapshot(
        self, tenant: str, agent: int, *, at: dt.datetime | None, txid: int | None, generation: int | None
    ) -> _Snapshot:
        if at is not None and txid is not None:
            raise ValueError("give at or txid, not both")
        at = None if at is None else _as_utc(at)
        ref = _ref(tenant, agent, generation if generation is not None else self._pick_generation(tenant, agent, at))
        replica_txid, written = self.storage.replica_position(ref.tenant, ref.agent, ref.generation)
        if replica_txid == 0:
            raise ReplicaNotFound(f"no replica for {ref}")
        point: tuple[Any, ...] = ("at", at.isoformat()) if at else ("txid", txid) if txid else ("latest", replica_txid)
        cache_key = (ref, *point)
        with self._lock:
            entry_lock = self._snapshot_locks.setdefault(cache_key, threading.Lock())
        with entry_lock:
            with self._lock:
                cached = self._snapshots.get(cache_key)
                if cached is not None and cached.path.exists():
                    cached.used = time.time()
                    return cached
            digest = hashlib.sha1(repr(point).encode()).hexdigest()[:12]
            path = self.root / "snapshots" / f"{_key(ref)}-{digest}.db"
            restored = self._restore(ref, path, at=at, txid=txid)
            freshness = Freshness(
                txid=restored,
                applied_at=_utc(time.time()),
                as_of=at,
                replica_txid=replica_txid,
                replica_written_at=_utc(written) if written else None,
                seconds_behind=0.0 if (at is None and txid is None and restored >= replica_txid) else None,
                checked_at=_utc(time.time()),
            )
            snap = _Snapshot(path, Source(ref, CopyKind.snapshot, freshness, _schema_version(path)), time.time())
            with self._lock:
                self._snapshots[cache_key] = snap
                self._trim_snapshots()
            return snap

    def _pick_generation(self, tenant: str, agent: int, at: dt.datetime | None) -> int:
        if at is None:
            current = self.storage.read_current(tenant, agent)
            if current is not None:
                return current.generation
        starts: dict[int, float] = {}
        prefix = self.storage.agent_prefix(tenant, agent)
        for entry in self.storage.objects(prefix):
            name = entry["Key"][len(prefix) :]
            if name.startswith("gen-") and name.endswith(".ltx"):
                gen = int(name[4:].split("/")[0])
                stamp = entry["LastModified"].timestamp()
                starts[gen] = min(stamp, starts.get(gen, stamp))
        if not starts:
            raise ReplicaNotFound(f"no replica for {tenant}/{agent}")
        if at is None:
            return max(starts)
        began = [gen for gen, stamp in starts.items() if stamp <= at.timestamp()]
        if not began:
            raise NoStateAt(f"{tenant}/{agent} has no replica from before {at.isoformat()}")
        return max(began)

    def _trim_snapshots(self) -> None:
        excess = len(self._snapshots) - self.settings.snapshot_cache
        if excess <= 0:
            return
        for key, snap in sorted(self._snapshots.items(), key=lambda item: item[1].used)[:excess]:
            del self._snapshots[key]
            _remove_copy(snap.path)

    # -- queries --------------------------------------------------------------------------------------------------

    def workflows(
        self,
        tenant: str,
        agent: int,
        generation: int | None = None,
        *,
        at: dt.datetime | None = None,
        txid: int | None = None,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        limit: int = 100,
        check_replica: bool = False,
    ) -> WorkflowList:
        """The agent's workflows, newest first. From the live or periodic copy when this generation is followed
        and no point in time is asked; otherwise from a snapshot (CURRENT's generation when none is given)."""
        statuses = [status] if isinstance(status, str) else list(status or ())

        def query(conn: apsw.Connection) -> tuple[list[WorkflowInfo], dict[str, int]]:
            return _list_workflows(conn, statuses, name, limit), _counts(conn)

        source, (rows, counts) = self._query(tenant, agent, generation, at, txid, query, check_replica)
        return WorkflowList(source, rows, counts)

    def workflow(
        self,
        tenant: str,
        agent: int,
        workflow_id: str,
        generation: int | None = None,
        *,
        at: dt.datetime | None = None,
        txid: int | None = None,
        check_replica: bool = False,
    ) -> WorkflowDetail:
        """One workflow with its steps, events and full log (errors included). Raises WorkflowNotInCopy."""
        source, detail = self._query(
            tenant, agent, generation, at, txid, lambda conn: _workflow_detail(conn, workflow_id), check_replica
        )
        if detail is None:
            raise WorkflowNotInCopy(f"no workflow {workflow_id!r} in {source.ref} ({source.kind})")
        workflow, steps, events, entries = detail
        return WorkflowDetail(source, workflow, steps, events, entries)

    def find_workflow(
        self, tenant: str, workflow_id: str, agents: Iterable[int] | None = None
    ) -> WorkflowDetail | None:
        """Look a workflow up without knowing which agent ran it: the followed copies of the tenant first, then
        the newest state of every agent ordinal with a replica (retired ordinals and hibernated agents
        included). None when no copy holds it."""
        with self._lock:
            followed = sorted(ref for ref in self._tracked if ref.tenant == _name(tenant))
        wanted = None if agents is None else set(agents)
        tried: set[tuple[int, int]] = set()
        for ref in followed:
            if wanted is not None and ref.agent not in wanted:
                continue
            tried.add((ref.agent, ref.generation))
            with contextlib.suppress(WorkflowNotInCopy, CopyUnreadable):
                return self.workflow(tenant, ref.agent, workflow_id, ref.generation)
        for agent in sorted(wanted) if wanted is not None else self.agents(tenant):
            for generation in reversed(self.storage.generations(tenant, agent)):
                if (agent, generation) in tried:
                    continue
                with contextlib.suppress(WorkflowNotInCopy, ReplicaNotFound, NoStateAt):
                    return self.workflow(tenant, agent, workflow_id, generation)
        return None

    def agents(self, tenant: str) -> list[int]:
        """Agent ordinals of `tenant` that have anything in object storage."""
        prefix = self.storage.tenant_prefix(_name(tenant)) + "agents/"
        found = {key[len(prefix) :].split("/")[0] for key in self.storage.keys(prefix)}
        return sorted(int(name) for name in found if name.isdigit())

    def problems(self, statuses: Iterable[str] = PROBLEM_STATUSES, limit_per_agent: int = 100) -> ProblemReport:
        """Workflows in `statuses` (default ERROR and BLOCKED) across every followed agent, from their copies."""
        wanted = list(statuses)
        with self._lock:
            refs = sorted(self._tracked)
        found: list[AgentWorkflow] = []
        unavailable: list[Unavailable] = []
        for ref in refs:
            try:
                listing = self._read_followed(ref, lambda c: _list_workflows(c, wanted, None, limit_per_agent))
            except ObserverError as exc:
                unavailable.append(Unavailable(ref, str(exc)))
                continue
            if listing is None:
                unavailable.append(Unavailable(ref, "copy not restored yet"))
                continue
            source, rows = listing
            found.extend(AgentWorkflow(source, row) for row in rows)
        found.sort(key=lambda item: item.workflow.updated_at, reverse=True)
        return ProblemReport(found, unavailable, len(refs))

    def read(
        self,
        tenant: str,
        agent: int,
        fn: Callable[[apsw.Connection], T],
        generation: int | None = None,
        *,
        at: dt.datetime | None = None,
        txid: int | None = None,
    ) -> tuple[Source, T]:
        """Run `fn` on a read-only connection to the copy (one read transaction). For callers with their own
        SQL (the benchmark, tests); the connection is closed when `fn` returns."""
        return self._query(tenant, agent, generation, at, txid, fn, False)

    # -- internals: choosing and reading a copy -------------------------------------------------------------------

    def _query(
        self,
        tenant: str,
        agent: int,
        generation: int | None,
        at: dt.datetime | None,
        txid: int | None,
        fn: Callable[[apsw.Connection], T],
        check_replica: bool,
    ) -> tuple[Source, T]:
        if at is None and txid is None:
            refs = self._followed_refs(tenant, agent, generation)
            for ref in refs:
                answer = self._read_followed(ref, fn)
                if answer is not None:
                    source, value = answer
                    return (self._with_replica(source) if check_replica else source), value
        snap = self._snapshot(tenant, agent, at=at, txid=txid, generation=generation)
        return snap.source, _read(snap.path, fn, live=False)

    def _followed_refs(self, tenant: str, agent: int, generation: int | None) -> list[AgentRef]:
        with self._lock:
            refs = [r for r in self._tracked if r.tenant == tenant and r.agent == agent]
        if generation is not None:
            return [r for r in refs if r.generation == generation]
        if not refs:
            return []
        current = self.storage.read_current(tenant, agent)
        if current is not None:
            return [r for r in refs if r.generation == current.generation]
        return sorted(refs, key=lambda r: r.generation, reverse=True)[:1]

    def _read_followed(self, ref: AgentRef, fn: Callable[[apsw.Connection], T]) -> tuple[Source, T] | None:
        """Read the followed copy of `ref`; None when it has no copy yet."""
        with self._lock:
            tracked = self._tracked.get(ref)
            if tracked is None:
                return None
            tracked.last_used = time.time()
            kind, copy, restored_at = tracked.kind, tracked.copy, tracked.restored_at
            standby = tracked.standby
            if kind is CopyKind.follow and standby is not None and _sidecar(copy) is None:
                kind, (copy, txid_standby, restored_at) = CopyKind.periodic, standby
            else:
                txid_standby = None

        def with_version(conn: apsw.Connection) -> tuple[int, T]:
            return int(conn.execute("PRAGMA user_version").fetchall()[0][0]), fn(conn)

        if kind is CopyKind.follow:
            # The sidecar is read before the data: the copy holds at least this transaction.
            position = _sidecar(copy)
            if position is None or not copy.exists():
                return None
            txid, applied = position
            version, value = _read(copy, with_version, live=True)
            freshness = Freshness(txid=txid, applied_at=_utc(applied))
        else:
            with self._lock:
                txid_known = tracked.txid if txid_standby is None else txid_standby
            if txid_known is None or restored_at is None or not copy.exists():
                return None
            version, value = _read(copy, with_version, live=False)
            with self._lock:
                checked = tracked.checked
            freshness = Freshness(txid=txid_known, applied_at=_utc(restored_at))
            if checked is not None and txid_standby is None:
                replica_txid, checked_at = checked
                freshness = replace(
                    freshness,
                    replica_txid=replica_txid,
                    checked_at=_utc(checked_at),
                    seconds_behind=0.0 if txid_known >= replica_txid else None,
                )
        self._note_position(ref, freshness.txid)
        return Source(ref, kind, freshness, version), value

    def _with_replica(self, source: Source) -> Source:
        return replace(source, freshness=self._compare(source.ref, source.freshness))

    def _compare(self, ref: AgentRef, freshness: Freshness) -> Freshness:
        """`freshness` with the replica's position now (one LIST of the generation's prefix)."""
        replica_txid, newest, first_missing = self._replica_state(ref, freshness.txid)
        now = time.time()
        behind = 0.0 if freshness.txid >= replica_txid else (now - first_missing if first_missing else None)
        return replace(
            freshness,
            replica_txid=replica_txid,
            replica_written_at=_utc(newest) if newest else None,
            seconds_behind=None if behind is None else round(max(0.0, behind), 3),
            checked_at=_utc(now),
        )

    def _replica_state(self, ref: AgentRef, txid: int) -> tuple[int, float | None, float | None]:
        """The replica's newest txid, when it was uploaded, and when the oldest file holding a transaction after
        `txid` was uploaded (None when the replica has nothing after it). From LTX names
        `<level>/<min>-<max>.ltx` (hex), lowest level first: compaction rewrites files later at higher levels."""
        prefix = self.storage.replica_prefix(ref.tenant, ref.agent, ref.generation)
        newest: tuple[int, int, float | None] = (0, 0, None)  # txid, -level, uploaded
        first_missing: tuple[int, float] | None = None  # level, uploaded
        for entry in self.storage.objects(prefix):
            level_text, _, name = entry["Key"][len(prefix) :].rpartition("/")
            if not (name.endswith(".ltx") and "-" in name and level_text.isdigit()):
                continue
            level, high = int(level_text), int(name[:-4].split("-")[1], 16)
            uploaded = entry["LastModified"].timestamp()
            if (high, -level) > newest[:2]:
                newest = (high, -level, uploaded)
            if high > txid and (first_missing is None or (level, uploaded) < first_missing):
                first_missing = (level, uploaded)
        return newest[0], newest[2], None if first_missing is None else first_missing[1]

    def _note_position(self, ref: AgentRef, txid: int) -> None:
        with self._lock:
            tracked = self._tracked.get(ref)
            if tracked is not None and (tracked.txid is None or txid > tracked.txid):
                if tracked.txid is not None:
                    tracked.last_change = time.time()
                tracked.txid = txid

    # -- internals: processes -------------------------------------------------------------------------------------

    def _live_count(self) -> int:
        return sum(1 for t in self._tracked.values() if t.kind is CopyKind.follow)

    def _config(self, ref: AgentRef) -> tuple[Path, Path]:
        """The generated litestream config naming this replica (written once), and the database path it names
        (a placeholder that never exists: restores always go to `-o`)."""
        key = _key(ref)
        placeholder = self.root / "configs" / f"{key}.db"
        path = self.root / "configs" / f"{key}.json"
        if not path.exists():
            url = self.storage.replica_url(ref.tenant, ref.agent, ref.generation)
            document = litestream.config(placeholder, url, self.storage.endpoint, self.storage.region)
            litestream.write_config(document, path.with_suffix(".tmp.json"))
            path.with_suffix(".tmp.json").replace(path)
        return path, placeholder

    def _start_follower(self, tracked: _Tracked) -> None:
        """Start `litestream restore -f` for `tracked` (under the lock). The copy is restored from scratch."""
        ref = tracked.ref
        config, placeholder = self._config(ref)
        copy = self.root / "follow" / f"{_key(ref)}.db"
        _remove_copy(copy)
        command = [
            litestream.binary(),
            "restore",
            "-config",
            str(config),
            "-f",
            "-follow-interval",
            f"{max(1, round(self.settings.follow_interval * 1000))}ms",
            "-o",
            str(copy),
            str(placeholder),
        ]
        with tracked.log_path.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=litestream.environment(self._credentials),
                start_new_session=True,  # a Ctrl-C meant for the control plane is not delivered to followers
            )
        # Pid, start time and copy: enough for a later observer to recognise this process (and not a reused pid).
        (self.root / "pids" / f"{process.pid}.pid").write_text(f"{_start_time(process.pid)}\n{copy}")
        if tracked.kind is CopyKind.periodic and tracked.restored_at is not None and tracked.txid is not None:
            # Until the follower has restored, queries keep reading the last periodic copy.
            tracked.standby = (tracked.copy, tracked.txid, tracked.restored_at)
        tracked.kind, tracked.process, tracked.copy = CopyKind.follow, process, copy
        log.info("observer.follower.started", agent_ref=str(ref), pid=process.pid)

    def _stop_process(self, tracked: _Tracked) -> None:
        if tracked.standby is not None:
            _remove_copy(tracked.standby[0])
            tracked.standby = None
        process = tracked.process
        tracked.process = None
        if process is None:
            return
        _terminate(process, self.settings.stop_timeout)
        (self.root / "pids" / f"{process.pid}.pid").unlink(missing_ok=True)
        log.info("observer.follower.stopped", agent_ref=str(tracked.ref), pid=process.pid, rc=process.returncode)

    def _demote(self, tracked: _Tracked) -> None:
        """Turn a live follower into a periodic copy (under the lock). Its last state stays readable: the stopped
        follower's file becomes the periodic copy until the next periodic restore replaces it."""
        self._stop_process(tracked)
        position = _sidecar(tracked.copy)
        periodic = self.root / "periodic" / f"{_key(tracked.ref)}.db"
        _remove_copy(periodic)
        now = time.time()
        if position is not None and tracked.copy.exists():
            tracked.copy.replace(periodic)
            tracked.txid, tracked.restored_at = position[0], now
            tracked.next_restore = now + self.settings.periodic_interval
        else:
            tracked.txid, tracked.restored_at, tracked.next_restore = None, None, 0.0
        _remove_copy(tracked.copy)
        tracked.kind, tracked.copy = CopyKind.periodic, periodic

    def _reap_leftovers(self) -> None:
        """Stop followers left by a previous observer on this cache_dir that died without close(): only the pids
        recorded here that are still a litestream process started at the recorded time (never a reused pid)."""
        for pid_file in (self.root / "pids").glob("*.pid"):
            pid = int(pid_file.stem)
            started, _, copy = pid_file.read_text().partition("\n")
            if started and started == _start_time(pid) and _command_name(pid) == "litestream":
                _kill_pid(pid, self.settings.stop_timeout)
                log.warning("observer.leftover.stopped", pid=pid, copy=copy)
            pid_file.unlink(missing_ok=True)

    def _restore(self, ref: AgentRef, output: Path, *, at: dt.datetime | None = None, txid: int | None = None) -> int:
        """A one-off restore of `ref` into `output` (replaced atomically); returns the restored txid."""
        config, placeholder = self._config(ref)
        scratch = self.root / "tmp" / f"{output.name}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
        command = [litestream.binary(), "restore", "-config", str(config), "-json", "-o", str(scratch)]
        if self.settings.integrity_check != "none":
            command += ["-integrity-check", self.settings.integrity_check]
        if at is not None:
            command += ["-timestamp", at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
        if txid is not None:
            command += ["-txid", f"{txid:016x}"]
        command.append(str(placeholder))
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=litestream.environment(self._credentials),
            start_new_session=True,
        )
        with self._lock:
            self._restores.add(process)
            closed = self._closed
        try:
            if closed:  # close() ran while this restore was being started: it must not outlive the observer
                _terminate(process, self.settings.stop_timeout)
                raise ObserverError("observer is closed")
            stdout, stderr = process.communicate(timeout=self.settings.restore_timeout)
        except subprocess.TimeoutExpired:
            _terminate(process, self.settings.stop_timeout)
            _remove_copy(scratch)
            raise ObserverError(f"restore of {ref} timed out after {self.settings.restore_timeout:.0f}s") from None
        finally:
            with self._lock:
                self._restores.discard(process)
        if process.returncode != 0:
            _remove_copy(scratch)
            message = (stderr or stdout).strip().splitlines()
            last = message[-1] if message else f"rc={process.returncode}"
            if "no matching backup" in last or "no snapshots" in last.lower():
                raise NoStateAt(f"{ref} holds no state at {at or (f'txid {txid}' if txid else 'all')}: {last}")
            raise ObserverError(f"restore of {ref} failed: {last}")
        summary = json.loads(stdout[stdout.index("{") :])
        output.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(scratch) + suffix).unlink(missing_ok=True)
        scratch.replace(output)
        return int(summary["txid"], 16)

    # -- internals: upkeep ----------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.tick):
            try:
                self._upkeep()
            except Exception:
                log.exception("observer.upkeep_failed")

    def _upkeep(self) -> None:
        now = time.time()
        due: list[_Tracked] = []
        with self._lock:
            if self._closed:
                return
            for tracked in self._tracked.values():
                if tracked.kind is CopyKind.follow:
                    self._check_follower(tracked, now)
                elif not tracked.restoring and now >= tracked.next_restore:
                    tracked.restoring = True
                    due.append(tracked)
            self._rebalance(now)
        # Restores run beside the loop (at most `periodic_concurrency` at once, longest due first): a long pass
        # of restores never delays a follower's restart or a rebalance.
        due.sort(key=lambda t: t.next_restore)
        for tracked in due:
            self._restore_queue.put(tracked)

    def _restore_worker(self) -> None:
        while True:
            tracked = self._restore_queue.get()
            if tracked is None or self._stop.is_set():
                return
            self._periodic_restore(tracked)

    def _check_follower(self, tracked: _Tracked, now: float) -> None:
        process = tracked.process
        if process is not None and process.poll() is None:
            position = _sidecar(tracked.copy)
            if position is not None:
                self._note_position_locked(tracked, position[0])
                if tracked.standby is not None:
                    _remove_copy(tracked.standby[0])
                    tracked.standby = None
            return
        if process is not None:
            (self.root / "pids" / f"{process.pid}.pid").unlink(missing_ok=True)
            tracked.last_error = f"litestream exited with {process.returncode}: {_tail(tracked.log_path)}"
            tracked.process = None
            tracked.restarts += 1
            tracked.next_start = now + min(60.0, 2.0 ** min(tracked.restarts, 6))
            log.warning("observer.follower.exited", agent_ref=str(tracked.ref), error=tracked.last_error)
        if now >= tracked.next_start and not self._closed:
            self._start_follower(tracked)

    def _note_position_locked(self, tracked: _Tracked, txid: int) -> None:
        if tracked.txid is None or txid > tracked.txid:
            if tracked.txid is not None:
                tracked.last_change = time.time()
            tracked.txid = txid

    def _periodic_restore(self, tracked: _Tracked) -> None:
        started = time.time()
        try:
            with self._lock:
                have = tracked.txid if tracked.restored_at is not None and tracked.copy.exists() else None
            replica_txid, _, _ = self._replica_state(tracked.ref, have or 0)
            if have is not None and have >= replica_txid:
                # Nothing new: one LIST instead of a restore (most agents of a fleet are idle most of the time).
                with self._lock:
                    tracked.checked = (replica_txid, started)
                return
            listed = time.time()
            txid = self._restore(tracked.ref, tracked.copy)
            log.debug(
                "observer.periodic.restored",
                agent_ref=str(tracked.ref),
                txid=txid,
                list_s=round(listed - started, 3),
                restore_s=round(time.time() - listed, 3),
            )
        except Exception as exc:
            with self._lock:
                tracked.last_error = str(exc)
            log.warning("observer.periodic.failed", agent_ref=str(tracked.ref), error=str(exc))
        else:
            with self._lock:
                if self._tracked.get(tracked.ref) is not tracked or tracked.kind is not CopyKind.periodic:
                    _remove_copy(self.root / "periodic" / f"{_key(tracked.ref)}.db")  # unfollowed meanwhile
                    return
                self._note_position_locked(tracked, txid)
                tracked.restored_at, tracked.last_error = started, None
                tracked.checked = (max(txid, replica_txid), started)
        finally:
            with self._lock:
                tracked.restoring = False
                tracked.next_restore = started + self.settings.periodic_interval

    def _rebalance(self, now: float) -> None:
        """Give live followers to the most active agents: fill free slots with periodic agents (most recently
        changed or used first), and swap the least active follower for a periodic agent that changed at least
        `rebalance_margin` seconds more recently. One swap per pass keeps churn low."""
        cap = self.settings.max_followers
        live = [t for t in self._tracked.values() if t.kind is CopyKind.follow]
        waiting = sorted(
            (t for t in self._tracked.values() if t.kind is CopyKind.periodic and not t.restoring),
            key=_activity,
            reverse=True,
        )
        while waiting and len(live) < cap:
            promoted = waiting.pop(0)
            self._start_follower(promoted)
            live.append(promoted)
        if not waiting or not live or now - self._last_swap < self.settings.rebalance_interval:
            return
        quietest = min(live, key=_activity)
        busiest = waiting[0]
        if _activity(busiest) > _activity(quietest) + self.settings.rebalance_margin:
            log.info("observer.rebalance", promoted=str(busiest.ref), demoted=str(quietest.ref))
            self._last_swap = now
            self._demote(quietest)
            self._start_follower(busiest)

    def _state(self, tracked: _Tracked) -> FollowState:
        if tracked.kind is CopyKind.follow:
            position = _sidecar(tracked.copy)
            ready = position is not None and tracked.copy.exists()
            txid, applied = (position[0], _utc(position[1])) if position else (tracked.txid, None)
        else:
            ready = tracked.restored_at is not None and tracked.copy.exists()
            txid = tracked.txid
            applied = _utc(tracked.restored_at) if tracked.restored_at else None
        return FollowState(
            ref=tracked.ref,
            kind=tracked.kind,
            pid=tracked.process.pid if tracked.process else None,
            ready=ready,
            txid=txid,
            applied_at=applied,
            last_used=_utc(tracked.last_used),
            last_change=_utc(tracked.last_change) if tracked.last_change else None,
            restarts=tracked.restarts,
            last_error=tracked.last_error,
        )

    def pids(self) -> list[int]:
        """Process ids of the litestream followers running now (for metrics and tests)."""
        with self._lock:
            return [t.process.pid for t in self._tracked.values() if t.process is not None]

    def _check_open(self) -> None:
        if self._closed:
            raise ObserverError("observer is closed")


# -- reading a copy -------------------------------------------------------------------------------------------------


def _read(path: Path, fn: Callable[[apsw.Connection], T], *, live: bool, attempts: int = 5) -> T:
    """Run `fn` in one read transaction on a fresh read-only connection, closed right after."""
    for attempt in range(attempts):
        try:
            conn = _connect(path, live=live)
        except apsw.CantOpenError as exc:
            raise CopyUnreadable(f"cannot open {path.name}: {exc}") from None
        try:
            with _read_transaction(conn):
                return fn(conn)
        except (apsw.BusyError, apsw.SchemaChangeError, apsw.CorruptError) as exc:
            # A live copy changed under us (follower applying a file): try again on a fresh connection.
            if attempt == attempts - 1:
                raise CopyUnreadable(f"{path.name} stayed unreadable: {exc}") from None
            time.sleep(0.05 * (attempt + 1))
        except apsw.Error as exc:
            raise CopyUnreadable(f"cannot read {path.name}: {exc}") from None
        finally:
            conn.close()
    raise AssertionError("unreachable")


def _connect(path: Path, *, live: bool) -> apsw.Connection:
    mode = "mode=ro" if live else "immutable=1"
    conn = apsw.Connection(f"file:{quote(str(path))}?{mode}", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    conn.set_busy_timeout(5_000)
    return conn


@contextlib.contextmanager
def _read_transaction(conn: apsw.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _schema_version(path: Path) -> int:
    try:
        return int(_read(path, lambda c: c.execute("PRAGMA user_version").fetchall()[0][0], live=False))
    except ObserverError:
        return 0


def _list_workflows(conn: apsw.Connection, statuses: list[str], name: str | None, limit: int) -> list[WorkflowInfo]:
    clauses: list[str] = []
    params: list[Any] = []
    if statuses:
        clauses.append(f"status IN ({','.join('?' * len(statuses))})")
        params += statuses
    if name:
        clauses.append("name=?")
        params.append(name)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {_STATE_COLUMNS} FROM workflow_state {where} ORDER BY created_at DESC, id LIMIT ?"
    return [WorkflowInfo.from_row(row) for row in conn.execute(sql, (*params, limit)).fetchall()]


def _counts(conn: apsw.Connection) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute("SELECT status, count(*) FROM workflow_state GROUP BY status")}


def _workflow_detail(
    conn: apsw.Connection, workflow_id: str
) -> tuple[WorkflowInfo, list[StepRecord], list[EventRecord], list[LogEntry]] | None:
    rows = conn.execute(f"SELECT {_STATE_COLUMNS} FROM workflow_state WHERE id=?", (workflow_id,)).fetchall()
    if not rows:
        return None
    entries = [
        LogEntry(r[0], r[1], r[2], r[3], r[4], WorkflowError.parse(r[5]), _utc(r[6]))
        for r in conn.execute(
            "SELECT lsn, seq, kind, name, value, error, at FROM execution_log WHERE workflow_id=? ORDER BY lsn",
            (workflow_id,),
        )
    ]
    steps = [
        StepRecord(r[0], r[1], r[2], r[3], WorkflowError.parse(r[4]), r[5], _utc(r[6]) if r[6] else None, _utc(r[7]))
        for r in conn.execute(
            "SELECT seq, kind, name, value, error, attempts, started_at, at FROM execution_log "
            "WHERE workflow_id=? AND seq IS NOT NULL ORDER BY seq, lsn",
            (workflow_id,),
        )
    ]
    events = [
        EventRecord(r[0], r[1], _utc(r[2]))
        for r in conn.execute("SELECT key, value, at FROM events WHERE workflow_id=? ORDER BY at", (workflow_id,))
    ]
    return WorkflowInfo.from_row(rows[0]), steps, events, entries


# -- small helpers --------------------------------------------------------------------------------------------------


def _sidecar(copy: Path) -> tuple[int, float] | None:
    """The follower's `<copy>-txid` file: the last transaction it applied (hex) and when it wrote it."""
    path = Path(str(copy) + "-txid")
    try:
        text = path.read_text().strip()
        mtime = path.stat().st_mtime
    except OSError:
        return None
    try:
        return int(text, 16), mtime
    except ValueError:
        return None


def _terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout)


def _kill_pid(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`: a follower still in its first restore can miss a SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is reaped by its parent, not by us)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _remove_copy(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-txid", "-txid.tmp", ".tmp"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-300:]


def _activity(tracked: _Tracked) -> float:
    return max(tracked.last_used, tracked.last_change or 0.0)


def _name(value: str) -> str:
    if not _NAME.match(value) or ".." in value:
        raise ValueError(f"not a valid tenant name: {value!r}")
    return value


def _ref(tenant: str, agent: int, generation: int) -> AgentRef:
    if agent < 0 or generation < 1:
        raise ValueError(f"agent must be >= 0 and generation >= 1, not {agent}/{generation}")
    return AgentRef(_name(tenant), int(agent), int(generation))


def _key(ref: AgentRef) -> str:
    return f"{ref.tenant}--{ref.agent}--g{ref.generation}"


def _utc(stamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, dt.UTC)


def _as_utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
