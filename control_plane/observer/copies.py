"""The followed copies: a live `restore -f` follower per agent up to `max_followers`, periodic full restores
beyond, and the upkeep that restarts crashed followers and gives live followers to the most active agents."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import apsw
import structlog

from agent_image.container.litestream import followed_position
from control_plane.observer.models import (
    AgentRef,
    CopyKind,
    FollowState,
    Freshness,
    ObserverError,
    Source,
    copy_key,
    utc,
)
from control_plane.observer.processes import Litestream, remove_copy, tail
from control_plane.observer.queries import read_copy

log = structlog.get_logger("control_plane.observer")

T = TypeVar("T")


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


class Copies:
    """The followed agents and their copies (under `lock`, shared with the observer)."""

    def __init__(self, litestream: Litestream, lock: threading.RLock) -> None:
        self.runner = litestream
        self.settings = litestream.settings
        self.root = litestream.root
        self.lock = lock
        self.tracked: dict[AgentRef, _Tracked] = {}
        self._last_swap = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Due periodic restores, first due first out, served by `periodic_concurrency` worker threads.
        self._restore_queue: queue.SimpleQueue[_Tracked | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the upkeep thread and the periodic restore workers (under the lock). Idempotent."""
        if self._thread is not None or self.runner.closed:
            return
        self._thread = threading.Thread(target=self._loop, name="litefleet-observer", daemon=True)
        self._thread.start()
        for index in range(max(1, self.settings.periodic_concurrency)):
            worker = threading.Thread(target=self._restore_worker, name=f"litefleet-observer-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def close(self) -> None:
        """Stop every follower and the upkeep threads (the runner is already marked closed)."""
        self._stop.set()
        with self.lock:
            self.runner.stop_all([t.process for t in self.tracked.values() if t.process is not None])
            for tracked in self.tracked.values():
                self._stop_process(tracked)
        for _ in self._workers:
            self._restore_queue.put(None)
        for worker in [self._thread, *self._workers]:
            if worker is not None:
                worker.join(timeout=self.settings.stop_timeout)

    # -- following ------------------------------------------------------------------------------------------------

    def follow(self, ref: AgentRef) -> FollowState:
        with self.lock:
            tracked = self.tracked.get(ref)
            if tracked is None:
                for older in [
                    r
                    for r in self.tracked
                    if (r.tenant, r.agent) == (ref.tenant, ref.agent) and r.generation < ref.generation
                ]:
                    self.unfollow(older.tenant, older.agent, older.generation)
                key = copy_key(ref)
                tracked = _Tracked(ref, self.root / "periodic" / f"{key}.db", self.root / "logs" / f"{key}.log")
                self.tracked[ref] = tracked
                if self._live_count() < self.settings.max_followers:
                    self._start_follower(tracked)
                log.info(
                    "observer.follow", tenant=ref.tenant, agent=ref.agent, generation=ref.generation, kind=tracked.kind
                )
            tracked.last_used = time.time()
            return self._state(tracked)

    def unfollow(self, tenant: str, agent: int, generation: int | None = None) -> int:
        with self.lock:
            refs = [
                ref
                for ref in self.tracked
                if ref.tenant == tenant and ref.agent == agent and generation in (None, ref.generation)
            ]
            for ref in refs:
                tracked = self.tracked.pop(ref)
                self._stop_process(tracked)
                remove_copy(tracked.copy)
                log.info("observer.unfollow", tenant=ref.tenant, agent=ref.agent, generation=ref.generation)
            return len(refs)

    def states(self) -> list[FollowState]:
        with self.lock:
            return [self._state(tracked) for tracked in sorted(self.tracked.values(), key=lambda t: t.ref)]

    def state(self, ref: AgentRef) -> FollowState | None:
        with self.lock:
            tracked = self.tracked.get(ref)
            return None if tracked is None else self._state(tracked)

    def refresh(self, ref: AgentRef) -> FollowState:
        """Restore a periodically-copied agent now (a live follower needs nothing: returns its state)."""
        with self.lock:
            tracked = self.tracked.get(ref)
            if tracked is None:
                raise ObserverError(f"{ref} is not followed")
            if tracked.kind is CopyKind.follow or tracked.restoring:
                return self._state(tracked)
            tracked.restoring = True
        self._periodic_restore(tracked)
        with self.lock:
            return self._state(tracked)

    def pids(self) -> list[int]:
        with self.lock:
            return [t.process.pid for t in self.tracked.values() if t.process is not None]

    # -- reading --------------------------------------------------------------------------------------------------

    def read(self, ref: AgentRef, fn: Callable[[apsw.Connection], T]) -> tuple[Source, T] | None:
        """Read the followed copy of `ref`; None when it has no copy yet."""
        with self.lock:
            tracked = self.tracked.get(ref)
            if tracked is None:
                return None
            tracked.last_used = time.time()
            kind, copy, restored_at = tracked.kind, tracked.copy, tracked.restored_at
            standby = tracked.standby
            if kind is CopyKind.follow and standby is not None and followed_position(copy) is None:
                kind, (copy, txid_standby, restored_at) = CopyKind.periodic, standby
            else:
                txid_standby = None

        def with_version(conn: apsw.Connection) -> tuple[int, T]:
            return int(conn.execute("PRAGMA user_version").fetchall()[0][0]), fn(conn)

        if kind is CopyKind.follow:
            # The `-txid` file is read before the data: the copy holds at least this transaction.
            position = followed_position(copy)
            if position is None or not copy.exists():
                return None
            txid, applied = position
            version, value = read_copy(copy, with_version, live=True)
            freshness = Freshness(txid=txid, applied_at=utc(applied))
        else:
            with self.lock:
                txid_known = tracked.txid if txid_standby is None else txid_standby
            if txid_known is None or restored_at is None or not copy.exists():
                return None
            version, value = read_copy(copy, with_version, live=False)
            with self.lock:
                checked = tracked.checked
            freshness = Freshness(txid=txid_known, applied_at=utc(restored_at))
            if checked is not None and txid_standby is None:
                replica_txid, checked_at = checked
                freshness = replace(
                    freshness,
                    replica_txid=replica_txid,
                    checked_at=utc(checked_at),
                    seconds_behind=0.0 if txid_known >= replica_txid else None,
                )
        self._note_position(ref, freshness.txid)
        return Source(ref, kind, freshness, version), value

    def _note_position(self, ref: AgentRef, txid: int) -> None:
        with self.lock:
            tracked = self.tracked.get(ref)
            if tracked is not None:
                self._note_position_locked(tracked, txid)

    def _note_position_locked(self, tracked: _Tracked, txid: int) -> None:
        if tracked.txid is None or txid > tracked.txid:
            if tracked.txid is not None:
                tracked.last_change = time.time()
            tracked.txid = txid

    # -- processes ------------------------------------------------------------------------------------------------

    def _live_count(self) -> int:
        return sum(1 for t in self.tracked.values() if t.kind is CopyKind.follow)

    def _start_follower(self, tracked: _Tracked) -> None:
        """Start a live follower for `tracked` (under the lock). The copy is restored from scratch."""
        copy = self.root / "follow" / f"{copy_key(tracked.ref)}.db"
        process = self.runner.start_follower(tracked.ref, copy, tracked.log_path)
        if tracked.kind is CopyKind.periodic and tracked.restored_at is not None and tracked.txid is not None:
            # Until the follower has restored, queries keep reading the last periodic copy.
            tracked.standby = (tracked.copy, tracked.txid, tracked.restored_at)
        tracked.kind, tracked.process, tracked.copy = CopyKind.follow, process, copy
        log.info("observer.follower.started", agent_ref=str(tracked.ref), pid=process.pid)

    def _stop_process(self, tracked: _Tracked) -> None:
        if tracked.standby is not None:
            remove_copy(tracked.standby[0])
            tracked.standby = None
        process = tracked.process
        tracked.process = None
        if process is None:
            return
        self.runner.stop(process)
        log.info("observer.follower.stopped", agent_ref=str(tracked.ref), pid=process.pid, rc=process.returncode)

    def _demote(self, tracked: _Tracked) -> None:
        """Turn a live follower into a periodic copy (under the lock). Its last state stays readable: the stopped
        follower's file becomes the periodic copy until the next periodic restore replaces it."""
        self._stop_process(tracked)
        position = followed_position(tracked.copy)
        periodic = self.root / "periodic" / f"{copy_key(tracked.ref)}.db"
        remove_copy(periodic)
        now = time.time()
        if position is not None and tracked.copy.exists():
            tracked.copy.replace(periodic)
            tracked.txid, tracked.restored_at = position[0], now
            tracked.next_restore = now + self.settings.periodic_interval
        else:
            tracked.txid, tracked.restored_at, tracked.next_restore = None, None, 0.0
        remove_copy(tracked.copy)
        tracked.kind, tracked.copy = CopyKind.periodic, periodic

    # -- upkeep ---------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.tick):
            try:
                self._upkeep()
            except Exception:
                log.exception("observer.upkeep_failed")

    def _upkeep(self) -> None:
        now = time.time()
        due: list[_Tracked] = []
        with self.lock:
            if self.runner.closed:
                return
            for tracked in self.tracked.values():
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
            position = followed_position(tracked.copy)
            if position is not None:
                self._note_position_locked(tracked, position[0])
                if tracked.standby is not None:
                    remove_copy(tracked.standby[0])
                    tracked.standby = None
            return
        if process is not None:
            self.runner.forget(process)
            tracked.last_error = f"litestream exited with {process.returncode}: {tail(tracked.log_path)}"
            tracked.process = None
            tracked.restarts += 1
            tracked.next_start = now + min(60.0, 2.0 ** min(tracked.restarts, 6))
            log.warning("observer.follower.exited", agent_ref=str(tracked.ref), error=tracked.last_error)
        if now >= tracked.next_start and not self.runner.closed:
            self._start_follower(tracked)

    def _periodic_restore(self, tracked: _Tracked) -> None:
        started = time.time()
        try:
            with self.lock:
                have = tracked.txid if tracked.restored_at is not None and tracked.copy.exists() else None
            replica_txid, _, _ = self.runner.replica_state(tracked.ref, have or 0)
            if have is not None and have >= replica_txid:
                # Nothing new: one LIST instead of a restore (most agents of a fleet are idle most of the time).
                with self.lock:
                    tracked.checked = (replica_txid, started)
                return
            listed = time.time()
            txid = self.runner.restore(tracked.ref, tracked.copy)
            log.debug(
                "observer.periodic.restored",
                agent_ref=str(tracked.ref),
                txid=txid,
                list_s=round(listed - started, 3),
                restore_s=round(time.time() - listed, 3),
            )
        except Exception as exc:
            with self.lock:
                tracked.last_error = str(exc)
            log.warning("observer.periodic.failed", agent_ref=str(tracked.ref), error=str(exc))
        else:
            with self.lock:
                if self.tracked.get(tracked.ref) is not tracked or tracked.kind is not CopyKind.periodic:
                    remove_copy(self.root / "periodic" / f"{copy_key(tracked.ref)}.db")  # unfollowed meanwhile
                    return
                self._note_position_locked(tracked, txid)
                tracked.restored_at, tracked.last_error = started, None
                tracked.checked = (max(txid, replica_txid), started)
        finally:
            with self.lock:
                tracked.restoring = False
                tracked.next_restore = started + self.settings.periodic_interval

    def _rebalance(self, now: float) -> None:
        """Give live followers to the most active agents: fill free slots with periodic agents (most recently
        changed or used first), and swap the least active follower for a periodic agent that changed at least
        `rebalance_margin` seconds more recently. One swap per pass keeps churn low."""
        cap = self.settings.max_followers
        live = [t for t in self.tracked.values() if t.kind is CopyKind.follow]
        waiting = sorted(
            (t for t in self.tracked.values() if t.kind is CopyKind.periodic and not t.restoring),
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
            position = followed_position(tracked.copy)
            ready = position is not None and tracked.copy.exists()
            txid, applied = (position[0], utc(position[1])) if position else (tracked.txid, None)
        else:
            ready = tracked.restored_at is not None and tracked.copy.exists()
            txid = tracked.txid
            applied = utc(tracked.restored_at) if tracked.restored_at else None
        return FollowState(
            ref=tracked.ref,
            kind=tracked.kind,
            pid=tracked.process.pid if tracked.process else None,
            ready=ready,
            txid=txid,
            applied_at=applied,
            last_used=utc(tracked.last_used),
            last_change=utc(tracked.last_change) if tracked.last_change else None,
            restarts=tracked.restarts,
            last_error=tracked.last_error,
        )


def _activity(tracked: _Tracked) -> float:
    return max(tracked.last_used, tracked.last_change or 0.0)
