"""SQL over a copy: one read transaction on a fresh read-only connection per query."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import apsw

from control_plane.observer.models import (
    STATE_COLUMNS,
    CopyUnreadable,
    EventRecord,
    LogEntry,
    ObserverError,
    StepRecord,
    WorkflowError,
    WorkflowInfo,
    utc,
)

T = TypeVar("T")


def read_copy(path: Path, fn: Callable[[apsw.Connection], T], *, live: bool, attempts: int = 5) -> T:
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


def schema_version(path: Path) -> int:
    try:
        return int(read_copy(path, lambda c: c.execute("PRAGMA user_version").fetchall()[0][0], live=False))
    except ObserverError:
        return 0


def list_workflows(conn: apsw.Connection, statuses: list[str], name: str | None, limit: int) -> list[WorkflowInfo]:
    clauses: list[str] = []
    params: list[Any] = []
    if statuses:
        clauses.append(f"status IN ({','.join('?' * len(statuses))})")
        params += statuses
    if name:
        clauses.append("name=?")
        params.append(name)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {STATE_COLUMNS} FROM workflow_state {where} ORDER BY created_at DESC, id LIMIT ?"
    return [WorkflowInfo.from_row(row) for row in conn.execute(sql, (*params, limit)).fetchall()]


def counts(conn: apsw.Connection) -> dict[str, int]:
    return {str(s): int(n) for s, n in conn.execute("SELECT status, count(*) FROM workflow_state GROUP BY status")}


def workflow_detail(
    conn: apsw.Connection, workflow_id: str
) -> tuple[WorkflowInfo, list[StepRecord], list[EventRecord], list[LogEntry]] | None:
    rows = conn.execute(f"SELECT {STATE_COLUMNS} FROM workflow_state WHERE id=?", (workflow_id,)).fetchall()
    if not rows:
        return None
    entries = [
        LogEntry(r[0], r[1], r[2], r[3], r[4], WorkflowError.parse(r[5]), utc(r[6]))
        for r in conn.execute(
            "SELECT lsn, seq, kind, name, value, error, at FROM execution_log WHERE workflow_id=? ORDER BY lsn",
            (workflow_id,),
        )
    ]
    steps = [
        StepRecord(r[0], r[1], r[2], r[3], WorkflowError.parse(r[4]), r[5], utc(r[6]) if r[6] else None, utc(r[7]))
        for r in conn.execute(
            "SELECT seq, kind, name, value, error, attempts, started_at, at FROM execution_log "
            "WHERE workflow_id=? AND seq IS NOT NULL ORDER BY seq, lsn",
            (workflow_id,),
        )
    ]
    events = [
        EventRecord(r[0], r[1], utc(r[2]))
        for r in conn.execute("SELECT key, value, at FROM events WHERE workflow_id=? ORDER BY at", (workflow_id,))
    ]
    return WorkflowInfo.from_row(rows[0]), steps, events, entries


# -- small helpers --------------------------------------------------------------------------------------------------
