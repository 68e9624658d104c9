"""Does the runtime's own WAL checkpointing corrupt what Litestream ships? Host-only, no Docker.

`python -m tests.integration.stress_checkpoint RUNS [--seconds S] [--checkpoints on|off]` runs, RUNS times: the
runtime's `Store` (group commit, several writer threads: inserts plus status updates on an indexed table) beside
`litestream replicate` (100 ms sync and monitor, a file replica, its control socket, a `sync -wait` prober like
the agent's), for S seconds; then a proven final sync, Litestream stopped, and the replica restored with
`-integrity-check full`. `--checkpoints on` lets the Store auto-checkpoint (the bug), `off` is the agent's fix."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import apsw

from agent_image._store import Store
from agent_image.container import litestream


def config(db: Path, replica: Path, socket: Path) -> dict[str, object]:
    return {
        "dbs": [
            {
                "path": str(db),
                "monitor-interval": "100ms",
                "replica": {"url": f"file://{replica}", "sync-interval": "100ms"},
            }
        ],
        "socket": {"enabled": True, "path": str(socket)},
    }


def one_run(work: Path, seconds: float, checkpoints: bool) -> dict[str, object]:
    db, replica, socket = work / "app.db", work / "replica", work / "ls.sock"
    store = Store(str(db), checkpoints=checkpoints)
    store.write(
        lambda c: c.execute(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, status TEXT, at REAL, body BLOB);"
            "CREATE INDEX IF NOT EXISTS t_status ON t (status, at);"
        )
    )
    path = work / "ls.json"
    path.write_text(json.dumps(config(db, replica, socket)))
    process = subprocess.Popen(
        [litestream.binary(), "replicate", "-config", str(path)],
        stdout=open(work / "ls.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=litestream.environment(),
    )
    stop = threading.Event()
    written = [0]

    def writer(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            key = index * 10_000_000 + n

            def write(c, key=key):  # type: ignore[no-untyped-def]
                c.execute("INSERT INTO t VALUES (?, 'PENDING', ?, randomblob(300))", (key, time.time()))
                c.execute("UPDATE t SET status = 'RUNNING', at = ? WHERE id = ?", (time.time(), key - 1))
                c.execute("UPDATE t SET status = 'SUCCESS', at = ? WHERE id = ?", (time.time(), key - 2))

            store.write(write)
            written[0] += 1

    def prober() -> None:
        while not stop.is_set():
            with contextlib.suppress(litestream.LitestreamError, ValueError):
                litestream.sync_wait(socket, db, timeout=5)
            time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)] + [threading.Thread(target=prober)]
    deadline = time.monotonic() + 30
    while "snapshot complete" not in (work / "ls.log").read_text():  # as in the agent: idle until replicated
        if time.monotonic() > deadline:
            raise RuntimeError("litestream took no snapshot")
        time.sleep(0.05)
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    store.close()
    final = litestream.sync_wait(socket, db, timeout=30)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    connection = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    local = "; ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    connection.close()
    try:
        Path(work / "restored.db").unlink(missing_ok=True)
        path2 = work / "restore.json"
        path2.write_text(json.dumps(config(db, replica, work / "unused.sock") | {"socket": None}))
        command = [litestream.binary(), "restore", "-integrity-check", "full", "-o", str(work / "restored.db")]
        done = subprocess.run(
            [*command, f"file://{replica}"], capture_output=True, text=True, env=litestream.environment(), check=False
        )
        restored = "ok" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
    except Exception as exc:
        restored = str(exc)
    log = (work / "ls.log").read_text()
    return {
        "writes": written[0],
        "txid": final.txid,
        "caught_up": final.caught_up,
        "local": local,
        "restore": restored,
        "snapshots": log.count("snapshot"),
        "wal_bytes_end": os.path.getsize(str(db) + "-wal") if os.path.exists(str(db) + "-wal") else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=int)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--checkpoints", choices=("on", "off"), default="off", help="off: as the replicated agent")
    args = parser.parse_args()
    bad = 0
    root = Path(tempfile.mkdtemp(prefix="lfc-ckpt-"))
    for run in range(args.runs):
        work = root / f"run-{run}"
        work.mkdir()
        result = one_run(work, args.seconds, args.checkpoints == "on")
        bad += result["restore"] != "ok"
        print(json.dumps({"run": run, **result}), flush=True)
    print(json.dumps({"runs": args.runs, "bad": bad, "kept": str(root)}), flush=True)


if __name__ == "__main__":
    main()
