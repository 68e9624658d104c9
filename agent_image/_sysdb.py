"""Every SQL statement the runtime runs against its file, and the schema they run on.

Shape (Obelisk's): `execution_log` is append-only and holds every transition and every durable operation
(`seq` numbers a workflow's operations in the order its code performs them); `workflow_state` is the
current-state table the API reads. `messages` and `events` hold what workflows exchange.

Each function takes a connection inside the caller's transaction (`Store.read` / `Store.write`), so a caller
composes several of them into one atomic write. Connection setup and transactions live in `_store`.
"""

from __future__ import annotations

import time
from typing import Any

import apsw

from agent_image import _json
from agent_image._errors import RuntimeStorageError, WorkflowNotFound
from agent_image._status import BLOCKED, CANCELLED, PENDING, RUNNING, StepInfo, WorkflowStatus

# One entry per schema version; never edit a shipped entry, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE workflow_state (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        status         TEXT NOT NULL,
        inputs         TEXT NOT NULL,
        output         TEXT,
        error          TEXT,
        parent_id      TEXT,
        queue          TEXT,
        bundle_version TEXT NOT NULL,
        blocked_reason TEXT,
        forked_from    TEXT,
        created_at     REAL NOT NULL,
        updated_at     REAL NOT NULL
    );
    CREATE INDEX workflow_state_status ON workflow_state (status, created_at);
    CREATE INDEX workflow_state_parent ON workflow_state (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX workflow_state_queue ON workflow_state (queue, status, created_at) WHERE queue IS NOT NULL;

    CREATE TABLE execution_log (
        lsn         INTEGER PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        seq         INTEGER,
        kind        TEXT NOT NULL,
        name        TEXT,
        value       TEXT,
        error       TEXT,
        attempts    INTEGER,
        started_at  REAL,
        at          REAL NOT NULL
    );
    CREATE UNIQUE INDEX execution_log_op ON execution_log (workflow_id, seq, kind) WHERE seq IS NOT NULL;
    CREATE INDEX execution_log_workflow ON execution_log (workflow_id, lsn);

    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        topic       TEXT NOT NULL,
        body        TEXT NOT NULL,
        sent_at     REAL NOT NULL,
        consumed_at REAL
    );
    CREATE INDEX messages_pending ON messages (workflow_id, topic, id) WHERE consumed_at IS NULL;

    CREATE TABLE events (
        workflow_id TEXT NOT NULL,
        key         TEXT NOT NULL,
        value       TEXT NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (workflow_id, key)
    );

    -- A monotonic counter the durability tests (and anyone) can bump; see Store.bump_counter.
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

STATE_COLUMNS = (
    "id, name, status, inputs, output, error, parent_id, queue, bundle_version, blocked_reason, forked_from, "
    "created_at, updated_at"
)
_LOG_COLUMNS = "workflow_id, seq, kind, name, value, error, attempts, started_at, at"
_SETTLE = (
    "UPDATE workflow_state SET status=?, output=?, error=?, blocked_reason=?, updated_at=? WHERE id=? AND status=? "
    f"RETURNING {STATE_COLUMNS}"
)
_INSERT_LOG = f"INSERT INTO execution_log ({_LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _rows(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return list(conn.execute(sql, params).fetchall())


def _value(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row, None when there is no row."""
    rows = _rows(conn, sql, params)
    return rows[0][0] if rows else None


# -- schema -----------------------------------------------------------------------------------------------------


def user_version(conn: apsw.Connection) -> int:
    return int(_value(conn, "PRAGMA user_version"))


def migrate(conn: apsw.Connection, path: str) -> None:
    """Bring the file to SCHEMA_VERSION, one transaction per migration (a crash leaves the previous version)."""
    current = user_version(conn)
    if current > SCHEMA_VERSION:
        raise RuntimeStorageError(
            f"{path} has schema version {current}; this runtime knows up to {SCHEMA_VERSION}. "
            "Run a newer litefleet agent image."
        )
    for version in range(current, SCHEMA_VERSION):
        with conn:
            conn.execute(MIGRATIONS[version])
            conn.execute(f"PRAGMA user_version={version + 1}")


# -- the execution log ------------------------------------------------------------------------------------------


def log_operation(
    conn: apsw.Connection,
    workflow_id: str,
    seq: int | None,
    kind: str,
    name: str | None,
    value_text: str | None = None,
    error: dict[str, str] | None = None,
    attempts: int | None = None,
    started_at: float | None = None,
) -> None:
    """Append one entry: a durable operation (`seq` set) or a status transition (`seq` None)."""
    error_text = _json.dump(error, "error") if error else None
    conn.execute(_INSERT_LOG, (workflow_id, seq, kind, name, value_text, error_text, attempts, started_at, time.time()))


def history(conn: apsw.Connection, workflow_id: str) -> list[tuple[Any, ...]]:
    """(seq, kind, name, value, error) of every durable operation a workflow logged, for replay."""
    return _rows(
        conn,
        "SELECT seq, kind, name, value, error FROM execution_log WHERE workflow_id=? AND seq IS NOT NULL",
        (workflow_id,),
    )


def steps(conn: apsw.Connection, workflow_id: str) -> list[StepInfo]:
    rows = _rows(
        conn,
        "SELECT seq, kind, name, value, error, attempts, started_at, at FROM execution_log "
        "WHERE workflow_id=? AND seq IS NOT NULL ORDER BY seq, lsn",
        (workflow_id,),
    )
    return [StepInfo(r[0], r[1], r[2], _json.load(r[3]), _json.load(r[4]), r[5], r[6], r[7]) for r in rows]


def copy_log(conn: apsw.Connection, to_id: str, from_id: str, before_seq: int) -> None:
    """Give workflow `to_id` the logged operations 1..before_seq-1 of `from_id` (a fork)."""
    conn.execute(
        f"INSERT INTO execution_log ({_LOG_COLUMNS}) SELECT ?, seq, kind, name, value, error, attempts, "
        "started_at, at FROM execution_log WHERE workflow_id=? AND seq IS NOT NULL AND seq < ? ORDER BY lsn",
        (to_id, from_id, before_seq),
    )


# -- workflow state ---------------------------------------------------------------------------------------------


def insert_workflow(
    conn: apsw.Connection,
    workflow_id: str,
    name: str,
    status: str,
    inputs: str,
    *,
    bundle_version: str,
    queue: str | None = None,
    parent_id: str | None = None,
    forked_from: str | None = None,
) -> str | None:
    """Insert a workflow row; None when inserted, else the name of the workflow already holding the id."""
    now = time.time()
    conn.execute(
        f"INSERT INTO workflow_state ({STATE_COLUMNS}) VALUES (?,?,?,?,NULL,NULL,?,?,?,NULL,?,?,?) "
        "ON CONFLICT(id) DO NOTHING",
        (workflow_id, name, status, inputs, parent_id, queue, bundle_version, forked_from, now, now),
    )
    if conn.changes() == 0:
        return str(_value(conn, "SELECT name FROM workflow_state WHERE id=?", (workflow_id,)))
    log_operation(conn, workflow_id, None, "created", status)
    return None


def settle(
    conn: apsw.Connection,
    workflow_id: str,
    status: str,
    output: str | None,
    error: dict[str, str] | None,
    blocked_reason: str | None,
) -> tuple[Any, ...] | None:
    """Move a RUNNING workflow to its end state and return its row as it now is (`STATE_COLUMNS`, what a read
    after the commit gives); None when a concurrent cancel won (the UPDATE matches nothing)."""
    rows = _rows(
        conn,
        _SETTLE,
        (
            status,
            output,
            _json.dump(error, "error") if error else None,
            blocked_reason,
            time.time(),
            workflow_id,
            RUNNING,
        ),
    )
    if not rows:
        return None
    log_operation(conn, workflow_id, None, "status", status, error=error)
    return rows[0]


def set_blocked(conn: apsw.Connection, workflow_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE workflow_state SET status=?, blocked_reason=?, updated_at=? WHERE id=?",
        (BLOCKED, reason, time.time(), workflow_id),
    )
    log_operation(conn, workflow_id, None, "status", BLOCKED, error={"type": "Blocked", "message": reason})


def unblock(conn: apsw.Connection, workflow_id: str) -> None:
    conn.execute(
        "UPDATE workflow_state SET status=?, blocked_reason=NULL, updated_at=? WHERE id=?",
        (RUNNING, time.time(), workflow_id),
    )
    log_operation(conn, workflow_id, None, "status", RUNNING)


def cancel_tree(conn: apsw.Connection, workflow_id: str) -> list[str]:
    """Cancel a workflow and its unsettled descendants; the ids that changed."""
    if not exists(conn, workflow_id):
        raise WorkflowNotFound(f"no workflow {workflow_id!r}")
    rows = _rows(
        conn,
        "WITH RECURSIVE tree(id) AS (SELECT ? UNION SELECT w.id FROM workflow_state w "
        "JOIN tree ON w.parent_id = tree.id) "
        "UPDATE workflow_state SET status=?, updated_at=? WHERE id IN tree AND status IN (?, ?, ?) RETURNING id",
        (workflow_id, CANCELLED, time.time(), PENDING, RUNNING, BLOCKED),
    )
    for (cancelled,) in rows:
        log_operation(conn, cancelled, None, "status", CANCELLED)
    return [row[0] for row in rows]


def claim_queued(conn: apsw.Connection, queue: str, limit: int) -> list[tuple[str, str, str]]:
    """Mark up to `limit` (-1: all) PENDING workflows of `queue` RUNNING, oldest first: (id, name, inputs)."""
    rows = _rows(
        conn,
        "UPDATE workflow_state SET status=?, updated_at=? WHERE id IN ("
        "  SELECT id FROM workflow_state WHERE queue=? AND status=? ORDER BY created_at LIMIT ?"
        ") RETURNING id, name, inputs",
        (RUNNING, time.time(), queue, PENDING, limit),
    )
    return [(row[0], row[1], row[2]) for row in rows]


def pending_queues(conn: apsw.Connection) -> list[str]:
    rows = _rows(conn, "SELECT DISTINCT queue FROM workflow_state WHERE status=? AND queue IS NOT NULL", (PENDING,))
    return [row[0] for row in rows]


def workflow(conn: apsw.Connection, workflow_id: str) -> WorkflowStatus:
    rows = _rows(conn, f"SELECT {STATE_COLUMNS} FROM workflow_state WHERE id=?", (workflow_id,))
    if not rows:
        raise WorkflowNotFound(f"no workflow {workflow_id!r}")
    return WorkflowStatus.from_row(rows[0])


def exists(conn: apsw.Connection, workflow_id: str) -> bool:
    return bool(_rows(conn, "SELECT 1 FROM workflow_state WHERE id=?", (workflow_id,)))


def list_workflows(conn: apsw.Connection, status: str | None, name: str | None, limit: int) -> list[WorkflowStatus]:
    clauses, params = [], []
    if status:
        clauses.append("status=?")
        params.append(status)
    if name:
        clauses.append("name=?")
        params.append(name)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {STATE_COLUMNS} FROM workflow_state {where} ORDER BY created_at DESC, id LIMIT ?"
    return [WorkflowStatus.from_row(row) for row in _rows(conn, sql, (*params, limit))]


def with_status(conn: apsw.Connection, *statuses: str) -> list[WorkflowStatus]:
    marks = ", ".join("?" * len(statuses))
    sql = f"SELECT {STATE_COLUMNS} FROM workflow_state WHERE status IN ({marks}) ORDER BY created_at"
    return [WorkflowStatus.from_row(row) for row in _rows(conn, sql, statuses)]


def fork_source(conn: apsw.Connection, workflow_id: str) -> tuple[str, str]:
    """(name, inputs) of the workflow to fork."""
    rows = _rows(conn, "SELECT name, inputs FROM workflow_state WHERE id=?", (workflow_id,))
    if not rows:
        raise WorkflowNotFound(f"no workflow {workflow_id!r}")
    return rows[0][0], rows[0][1]


def count_with_status(conn: apsw.Connection, *statuses: str) -> int:
    marks = ", ".join("?" * len(statuses))
    return int(_value(conn, f"SELECT count(*) FROM workflow_state WHERE status IN ({marks})", statuses))


def counts(conn: apsw.Connection) -> dict[str, int]:
    return {row[0]: row[1] for row in _rows(conn, "SELECT status, count(*) FROM workflow_state GROUP BY status")}


# -- messages and events ----------------------------------------------------------------------------------------


def insert_message(conn: apsw.Connection, destination_id: str, topic: str, body: str) -> None:
    if not exists(conn, destination_id):
        raise WorkflowNotFound(f"no workflow {destination_id!r} to send a message to")
    conn.execute(
        "INSERT INTO messages (workflow_id, topic, body, sent_at) VALUES (?, ?, ?, ?)",
        (destination_id, topic, body, time.time()),
    )


def take_message(conn: apsw.Connection, workflow_id: str, topic: str) -> tuple[bool, str | None]:
    """Consume the oldest unread message on `topic`: (True, body), or (False, None) when there is none."""
    rows = _rows(
        conn,
        "SELECT id, body FROM messages WHERE workflow_id=? AND topic=? AND consumed_at IS NULL ORDER BY id LIMIT 1",
        (workflow_id, topic),
    )
    if not rows:
        return False, None
    conn.execute("UPDATE messages SET consumed_at=? WHERE id=?", (time.time(), rows[0][0]))
    return True, rows[0][1]


def read_event(conn: apsw.Connection, workflow_id: str, key: str) -> str | None:
    """The JSON text of event `key` of a workflow, None if it is not set."""
    text = _value(conn, "SELECT value FROM events WHERE workflow_id=? AND key=?", (workflow_id, key))
    return None if text is None else str(text)


def set_event(conn: apsw.Connection, workflow_id: str, key: str, text: str) -> None:
    conn.execute(
        "INSERT INTO events (workflow_id, key, value, at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(workflow_id, key) DO UPDATE SET value=excluded.value, at=excluded.at",
        (workflow_id, key, text, time.time()),
    )


# -- counters ---------------------------------------------------------------------------------------------------


def bump_counter(conn: apsw.Connection, name: str) -> int:
    return int(
        _value(
            conn,
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value",
            (name,),
        )
    )


def counter(conn: apsw.Connection, name: str) -> int:
    value = _value(conn, "SELECT value FROM counters WHERE name=?", (name,))
    return 0 if value is None else int(value)
