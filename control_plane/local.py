"""`litefleet up` / `down`: the embedded defaults on one machine, started and stopped by recorded pids."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import docker
import httpx

from control_plane import images
from control_plane.host_address import local_host_address
from control_plane.objectstore import EmbeddedStore, exited
from control_plane.server import embedded_store
from control_plane.settings import Settings


class UpError(RuntimeError):
    pass


@dataclass
class ControlPlaneProcess:
    """`litefleet serve` as a child process with its own environment, log and URL (used by `up`, the e2e tests
    and the fleet benchmark). `detach` lets it outlive the caller (`litefleet up`)."""

    env: dict[str, str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def beside(cls, store: EmbeddedStore, image: str, state_dir: Path, **settings: str) -> Self:
        """A control plane for `store` on a free local port, state in `state_dir`; `settings` are extra
        LITEFLEET_* values by lower-case name (e.g. drain_timeout="5")."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        address = store.address
        env = {
            **os.environ,
            "LITEFLEET_STATE_DIR": str(state_dir),
            "LITEFLEET_STORE_IP": address.ip,
            "LITEFLEET_STORE_S3_PORT": str(address.s3_port),
            "LITEFLEET_STORE_MASTER_PORT": str(address.master_port),
            "LITEFLEET_STORE_VOLUME_PORT": str(address.volume_port),
            "LITEFLEET_STORE_FILER_PORT": str(address.filer_port),
            "LITEFLEET_BUCKET": store.bucket,
            "LITEFLEET_S3_ADMIN_KEY": store._admin[0],
            "LITEFLEET_S3_ADMIN_SECRET": store._admin[1],
            "LITEFLEET_API_PORT": str(port),
            "LITEFLEET_IMAGE": image,
            **{f"LITEFLEET_{name.upper()}": value for name, value in settings.items()},
        }
        return cls(env, f"http://127.0.0.1:{port}", state_dir / "control-plane.log")

    def register(self, name: str, engine_url: str, address: str, tls: str | None = None) -> None:
        node = {"name": name, "engine_url": engine_url, "address": address, "tls": tls}
        answer = httpx.post(f"{self.url}/v1/nodes", json=node, timeout=30)
        if answer.status_code != 201:
            raise UpError(f"could not register {name}: {answer.text}")

    def start(self, *, detach: bool = False, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve"],
                env=self.env, stdout=log, stderr=log, start_new_session=detach,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise UpError(f"control plane did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _effective(settings: Settings) -> Settings:
    """Containers cannot reach 127.0.0.1: unless told otherwise, bind the store to the local engine's bridge."""
    if "LITEFLEET_STORE_IP" in os.environ or settings.s3_endpoint:
        return settings
    return settings.model_copy(update={"store_ip": local_host_address()})


def up(settings: Settings) -> Iterator[str]:
    settings = _effective(settings)
    built = images.build_agent_image(docker.from_env())
    yield f"image     {built.tag} ({'built' if built.built else 'up to date'})"
    store = embedded_store(settings)
    store.up()
    yield f"store     {store.address.endpoint} bucket={settings.bucket} (logs: {store.directory}/weed.log)"
    pid_file = settings.state_dir / "control-plane.pid"
    log_file = settings.state_dir / "control-plane.log"
    if not healthy(settings.client_url):
        env = {**os.environ, "LITEFLEET_STORE_IP": settings.store_ip, "LITEFLEET_IMAGE": built.tag}
        plane = ControlPlaneProcess(env, settings.client_url, log_file)
        plane.start(detach=True)
        assert plane.process is not None
        pid_file.write_text(str(plane.process.pid))
    yield f"control   {settings.client_url} (database {settings.fleet_database_url}; logs: {log_file})"
    nodes = httpx.get(f"{settings.client_url}/v1/nodes", timeout=10).json()
    if not nodes:
        ControlPlaneProcess({}, settings.client_url, log_file).register(
            "local", os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock", "127.0.0.1"
        )
        nodes = [{"name": "local"}]
    yield f"nodes     {', '.join(node['name'] for node in nodes)}"


def down(settings: Settings) -> Iterator[str]:
    pid_file = settings.state_dir / "control-plane.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while not exited(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        except ProcessLookupError:
            pass
        pid_file.unlink()
        yield "control   stopped"
    embedded_store(_effective(settings)).down()
    yield "store     stopped"
