"""A real `litefleet-agent serve` process for the tests that signal, kill or race it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import apsw
import httpx

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(db: Path, port: int, bundle: str = "tenants.hello", **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent_image", "serve", "--bundle", bundle, "--db", str(db), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)} | env,
    )


def wait_ready(port: int, proc: subprocess.Popen[str], headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("agent never became ready")


def log_rows(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read the agent's file from outside (read-only), as a crash test's observer does."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)
    try:
        return conn.execute(sql, params).fetchall()
    except apsw.SQLError:
        return []  # schema not created yet
    finally:
        conn.close()
