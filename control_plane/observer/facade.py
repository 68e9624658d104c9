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
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TypeVar

import apsw
import structlog

from control_plane.observer.copies import Copies
from control_plane.observer.models import (
    PROBLEM_STATUSES,
    AgentRef,
    AgentWorkflow,
    CopyKind,
    CopyUnreadable,
    FollowState,
    Freshness,
    NoStateAt,
    ObserverError,
    ObserverSettings,
    ProblemReport,
    ReplicaNotFound,
    Source,
    Unavailable,
    WorkflowDetail,
    WorkflowInfo,
    WorkflowList,
    WorkflowNotInCopy,
    check_name,
    make_ref,
    utc,
)
from control_plane.observer.processes import Litestream
from control_plane.observer.queries import counts, list_workflows, read_copy, workflow_detail
from control_plane.observer.snapshots import Snapshots
from control_plane.storage import ObjectStorage

log = structlog.get_logger("control_plane.observer")

T = TypeVar("T")


class Observer:
    """Read-only copies of agents' databases from their replicas. Thread-safe; every litestream process it
    starts is recorded by pid (under `cache_dir/pids`) and stopped by pid in `close()` (and, after a crash of
    the process that owned them, by the next Observer on the same cache_dir)."""

    def __init__(
        self, storage: ObjectStorage, settings: ObserverSettings, *, credentials: tuple[str, str] | None = None
    ) -> None:
        self.storage = storage
        self.settings = settings
        self._lock = threading.RLock()
        self.root = settings.cache_dir.resolve()
        for sub in ("follow", "periodic", "snapshots", "configs", "logs", "pids", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # A read-only key scoped to the fleet's tenants is enough (Read + List); by default the storage's own.
        key = credentials if credentials is not None else storage.credentials
        self._litestream = Litestream(storage, settings, self.root, key, self._lock)
        self._litestream.reap_leftovers()
        # A follow copy is only ever reused by its own process: start clean.
        for sub in ("follow", "tmp"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir()
        self._copies = Copies(self._litestream, self._lock)
        self._snapshots = Snapshots(self._litestream, self._lock)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the upkeep thread (restart crashed followers, periodic restores, promote/demote). Idempotent."""
        with self._lock:
            self._copies.start()

    def close(self) -> None:
        """Stop the upkeep thread and every litestream process this observer started. Safe to call twice."""
        with self._lock:
            if self._litestream.closed:
                return
            self._litestream.closed = True
        self._copies.close()
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
        ref = make_ref(tenant, agent, generation)
        with self._lock:
            self._check_open()
            return self._copies.follow(ref)

    def unfollow(self, tenant: str, agent: int, generation: int | None = None) -> int:
        """Stop following (every generation of the agent when `generation` is None) and delete the copies.
        Returns how many were followed; unfollowing what is not followed is harmless (returns 0)."""
        return self._copies.unfollow(tenant, agent, generation)

    def followed(self) -> list[FollowState]:
        return self._copies.states()

    def follow_state(self, tenant: str, agent: int, generation: int) -> FollowState | None:
        return self._copies.state(AgentRef(tenant, agent, generation))

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
            if state.kind is CopyKind.periodic and not self._copies.running:
                self.refresh(tenant, agent, generation)
            time.sleep(0.05)

    def refresh(self, tenant: str, agent: int, generation: int) -> FollowState:
        """Restore a periodically-copied agent now (a live follower needs nothing: returns its state)."""
        return self._copies.refresh(AgentRef(tenant, agent, generation))

    def pids(self) -> list[int]:
        """Process ids of the litestream followers running now (for metrics and tests)."""
        return self._copies.pids()

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
        return self._snapshots.get(tenant, agent, at=at, txid=txid, generation=generation).source

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
            return list_workflows(conn, statuses, name, limit), counts(conn)

        source, (rows, by_status) = self._query(tenant, agent, generation, at, txid, query, check_replica)
        return WorkflowList(source, rows, by_status)

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
            tenant, agent, generation, at, txid, lambda conn: workflow_detail(conn, workflow_id), check_replica
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
            followed = sorted(ref for ref in self._copies.tracked if ref.tenant == check_name(tenant))
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
        prefix = self.storage.tenant_prefix(check_name(tenant)) + "agents/"
        found = {key[len(prefix) :].split("/")[0] for key in self.storage.keys(prefix)}
        return sorted(int(name) for name in found if name.isdigit())

    def problems(self, statuses: Iterable[str] = PROBLEM_STATUSES, limit_per_agent: int = 100) -> ProblemReport:
        """Workflows in `statuses` (default ERROR and BLOCKED) across every followed agent, from their copies."""
        wanted = list(statuses)
        with self._lock:
            refs = sorted(self._copies.tracked)
        found: list[AgentWorkflow] = []
        unavailable: list[Unavailable] = []
        for ref in refs:
            try:
                listing = self._copies.read(ref, lambda c: list_workflows(c, wanted, None, limit_per_agent))
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
                answer = self._copies.read(ref, fn)
                if answer is not None:
                    source, value = answer
                    return (self._with_replica(source) if check_replica else source), value
        snap = self._snapshots.get(tenant, agent, at=at, txid=txid, generation=generation)
        return snap.source, read_copy(snap.path, fn, live=False)

    def _followed_refs(self, tenant: str, agent: int, generation: int | None) -> list[AgentRef]:
        with self._lock:
            refs = [r for r in self._copies.tracked if r.tenant == tenant and r.agent == agent]
        if generation is not None:
            return [r for r in refs if r.generation == generation]
        if not refs:
            return []
        current = self.storage.read_current(tenant, agent)
        if current is not None:
            return [r for r in refs if r.generation == current.generation]
        return sorted(refs, key=lambda r: r.generation, reverse=True)[:1]

    def _with_replica(self, source: Source) -> Source:
        return replace(source, freshness=self._compare(source.ref, source.freshness))

    def _compare(self, ref: AgentRef, freshness: Freshness) -> Freshness:
        """`freshness` with the replica's position now (one LIST of the generation's prefix)."""
        replica_txid, newest, first_missing = self._litestream.replica_state(ref, freshness.txid)
        now = time.time()
        behind = 0.0 if freshness.txid >= replica_txid else (now - first_missing if first_missing else None)
        return replace(
            freshness,
            replica_txid=replica_txid,
            replica_written_at=utc(newest) if newest else None,
            seconds_behind=None if behind is None else round(max(0.0, behind), 3),
            checked_at=utc(now),
        )

    def _check_open(self) -> None:
        if self._litestream.closed:
            raise ObserverError("observer is closed")
