"""The runtime's one SQLite file: connections, migrations (the schema is in `_sysdb`), the single-process lock,
and group commit.

Writes are group-committed: one writer thread folds whatever is queued into a single transaction, so 64
workflows finishing a step at once cost one fsync, not 64; a write that finds nothing queued and the connection
free is committed by its own caller (a sequential workflow pays no thread hand-off per step). Reads use a small
pool of read connections; in WAL mode they never block the writer. The WAL belongs to Litestream: this module
never truncates or deletes it.

Checkpoints: standalone, SQLite's default passive auto-checkpoints. Under Litestream (`checkpoints=False`), none
at all, not even when the last connection closes: a checkpoint Litestream did not run copies frames it may not have
shipped into the database file and lets the next write restart the WAL over them. Litestream then sees "wal
overwritten by another process" and ships a full snapshot read from the live database file, which this process
keeps changing (writes, and its next auto-checkpoint) while the snapshot is read: a replica that restores into a
database failing `PRAGMA integrity_check` ("wrong # of entries in index ..."), though the local file is fine.
Litestream checkpoints itself (1000 pages, passive, holding the write lock while it does), so the WAL stays bounded.
"""

from __future__ import annotations

import fcntl
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import apsw

from agent_image import _sysdb
from agent_image._errors import DatabaseInUse, RuntimeStorageError

MIN_SQLITE = (3, 51, 3)
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
_MAX_BATCH = 512
_BUSY_TIMEOUT_MS = 10_000

T = TypeVar("T")
Write = Callable[[apsw.Connection], T]


def sqlite_version() -> tuple[int, ...]:
    return tuple(int(part) for part in apsw.sqlite_lib_version().split("."))


class _Pending:
    """One queued write: the caller blocks on `done` (a held lock) until the writer releases it."""

    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Write[Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()


_STOP = object()


class Store:
    """The runtime's SQLite file. Open it once per process; a second process gets `DatabaseInUse`.

    `checkpoints=False` when Litestream replicates the file: this process then never checkpoints its WAL."""

    def __init__(self, path: str, *, synchronous: str = "FULL", checkpoints: bool = True) -> None:
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}")
        if sqlite_version() < MIN_SQLITE:
            raise RuntimeStorageError(
                f"SQLite {apsw.sqlite_lib_version()} is too old: the runtime needs >= 3.51.3 "
                "(older versions can corrupt a WAL that Litestream checkpoints); install apsw >= 3.51.3"
            )
        self.path = os.path.realpath(path)  # the real file: a symlink to it must meet the same lock
        self.synchronous = synchronous
        self.checkpoints = checkpoints
        self._lock_file = _take_process_lock(self.path)
        try:
            self._write_conn = self._connect()
            self._migrate()
        except BaseException:
            self._lock_file.close()
            raise
        self._readers: queue.SimpleQueue[apsw.Connection] = queue.SimpleQueue()
        self._all_readers: list[apsw.Connection] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._committing = threading.Lock()  # held by whoever commits on the write connection
        self._gate = threading.Lock()  # orders `close` against writes joining the queue
        self._closing = False  # no new writes (set under `_gate`)
        self._closed = False  # connections closed
        self._commits = 0  # transactions this process committed (written by the writer thread only)
        self._writer = threading.Thread(target=self._write_loop, name="litefleet-writer", daemon=True)
        self._writer.start()

    # -- connections --------------------------------------------------------------------------------------------

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(self.path)
        conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
        journal = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
        if journal != "wal":
            raise RuntimeStorageError(f"{self.path}: could not switch to WAL mode (got {journal!r})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        if not self.checkpoints:  # Litestream owns the WAL (module docstring)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        return conn

    def _migrate(self) -> None:
        _sysdb.migrate(self._write_conn, self.path)

    @property
    def schema_version(self) -> int:
        return self.read(_sysdb.user_version)

    # -- reads --------------------------------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[apsw.Connection]:
        self._check_open()
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
            self._all_readers.append(conn)
        try:
            yield conn
        finally:
            self._readers.put(conn)

    def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run `fn` in one read transaction (a consistent snapshot)."""
        with self.reader() as conn, conn:
            return fn(conn)

    # -- writes -------------------------------------------------------------------------------------------------

    def write(self, fn: Write[T]) -> T:
        """Run `fn` inside a committed transaction; return once it is durable.

        Uncontended (nothing queued, no commit running) the caller commits `fn` itself on the write connection: a
        sequential caller pays no hand-off to the writer thread and back, two thread switches per write. Otherwise
        `fn` joins the queue and the writer thread folds it into its next group commit, so concurrent writers still
        share fsyncs. Either way, an exception in `fn` undoes only that write and is re-raised to its caller; the
        other writes in the batch still commit.
        """
        if self._queue.empty() and self._committing.acquire(blocking=False):
            try:
                self._check_writable()
                return self._commit_alone(fn)
            finally:
                self._committing.release()
        pending = _Pending(fn)
        with self._gate:  # with `close`: a write queued after the writer's stop would wait forever
            self._check_writable()
            self._queue.put(pending)
        pending.done.acquire()
        if pending.error is not None:
            raise pending.error
        return cast(T, pending.result)

    def _commit_alone(self, fn: Write[T]) -> T:
        """`_commit` of a batch of one, by its caller (who holds `_committing`): the same transaction, the same
        errors (`fn`'s own, or RuntimeStorageError when the transaction fails)."""
        pending = _Pending(fn)
        self._commit([pending])
        if pending.error is not None:
            raise pending.error
        return cast(T, pending.result)

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            with self._committing:
                batch: list[_Pending] = [first]
                stop_after = False
                while len(batch) < _MAX_BATCH:  # everything queued while the connection was busy joins
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop_after = True
                        break
                    batch.append(item)
                self._commit(batch)
            if stop_after:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        """Commit a batch in one transaction (the caller holds `_committing`). Optimistic: run every write
        plainly; only if one raises, roll the whole batch back and redo the others' writes with a savepoint per
        write, so a failing write cannot take others with it (a batch of one is just rolled back)."""
        conn = self._write_conn
        try:
            if self._run_batch(conn, batch, isolate=False):
                self._commits += 1
            elif len(batch) > 1:
                self._run_batch(conn, batch, isolate=True)
                self._commits += 1
        except apsw.Error as exc:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.error = pending.error or RuntimeStorageError(f"commit failed: {exc}")
        finally:
            for pending in batch:
                pending.done.release()

    @staticmethod
    def _run_batch(conn: apsw.Connection, batch: list[_Pending], *, isolate: bool) -> bool:
        conn.execute("BEGIN IMMEDIATE")
        for pending in batch:
            if isolate:
                conn.execute("SAVEPOINT w")
            try:
                pending.result = pending.fn(conn)
                pending.error = None
            except BaseException as exc:
                pending.error = exc
                if not isolate:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute("ROLLBACK TO w")
            if isolate:
                conn.execute("RELEASE w")
        conn.execute("COMMIT")
        return True

    @property
    def commits(self) -> int:
        """How many write transactions this process has committed (group commits: one per batch). Counted here,
        not by Litestream, so it keeps counting while nothing reaches the replica."""
        return self._commits

    # -- helpers ------------------------------------------------------------------------------------------------

    def bump_counter(self, name: str) -> int:
        """Increment and return a durable monotonic counter (one committed transaction per call)."""
        return self.write(lambda conn: _sysdb.bump_counter(conn, name))

    def counter(self, name: str) -> int:
        return self.read(lambda conn: _sysdb.counter(conn, name))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeStorageError(f"{self.path} is closed")

    def _check_writable(self) -> None:
        if self._closing:
            raise RuntimeStorageError(f"{self.path} is closed")

    def close(self) -> None:
        """Finish queued writes, close every connection, release the process lock. Safe to call twice."""
        with self._gate:
            if self._closing:
                return
            self._closing = True
            self._queue.put(_STOP)
        self._writer.join()
        with self._committing:  # a caller committing its own write finishes it first
            self._closed = True
            for conn in [self._write_conn, *self._all_readers]:
                conn.close()
        self._lock_file.close()


def _take_process_lock(db_path: str) -> Any:
    """One runtime per database file: an exclusive flock on `<db>.agent-lock` (Litestream never touches it).

    `db_path` is the resolved path, so every symlink to the file (or to a directory above it) names the same
    lock. A hard link would not, so a file with several links is refused (SQLite cannot share its WAL either)."""
    directory = os.path.dirname(db_path)
    if not os.path.isdir(directory):
        raise RuntimeStorageError(f"directory {directory} does not exist")
    links = os.stat(db_path).st_nlink if os.path.exists(db_path) else 1
    if links > 1:
        raise DatabaseInUse(f"{db_path} has {links} hard links; one agent runtime per database file")
    lock_file = open(db_path + ".agent-lock", "a+")  # noqa: SIM115 - held for the store's lifetime
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise DatabaseInUse(f"{db_path} is already open by {holder}; one agent runtime per database file") from None
    lock_file.truncate(0)
    lock_file.write(f"pid {os.getpid()}")
    lock_file.flush()
    return lock_file
