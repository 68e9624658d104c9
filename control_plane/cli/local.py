"""`litefleet up` / `down`: the embedded defaults on one machine, started and stopped by recorded pids."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Self

import docker

from control_plane.client import CliError, FleetClient
from control_plane.drivers import images
from control_plane.drivers.host_address import local_host_address
from control_plane.settings import Settings, api_token
from control_plane.storage.seaweed import EmbeddedStore, embedded_store, exited
from control_plane.timing import poll


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
            "LITEFLEET_STORE_DIR": str(store.directory),  # `weed shell` needs the store's gRPC client certificate
            "LITEFLEET_STORE_IP": address.ip,
            "LITEFLEET_STORE_S3_PORT": str(address.s3_port),
            "LITEFLEET_STORE_MASTER_PORT": str(address.master_port),
            "LITEFLEET_STORE_VOLUME_PORT": str(address.volume_port),
            "LITEFLEET_STORE_FILER_PORT": str(address.filer_port),
            "LITEFLEET_BUCKET": store.bucket,
            "LITEFLEET_S3_ADMIN_KEY": store.admin[0],
            "LITEFLEET_S3_ADMIN_SECRET": store.admin[1],
            "LITEFLEET_API_PORT": str(port),
            "LITEFLEET_API_TOKEN": secrets.token_urlsafe(32),
            "LITEFLEET_IMAGE": image,
            **{f"LITEFLEET_{name.upper()}": value for name, value in settings.items()},
        }
        return cls(env, f"http://127.0.0.1:{port}", state_dir / "control-plane.log")

    @cached_property
    def client(self) -> FleetClient:
        """The /v1 client for this control plane, with its API token when it has one: one per process object, so
        its connections are reused (a new client costs ~50 ms of CPU)."""
        return FleetClient(self.url, token=self.env.get("LITEFLEET_API_TOKEN"))

    def register(self, name: str, engine_url: str, address: str, tls: str | None = None) -> None:
        body = {"name": name, "engine_url": engine_url, "address": address, "tls": tls}
        answer = self.client.send("POST", "/v1/nodes", json=body, timeout=30)
        if answer.status_code != 201:
            raise UpError(f"could not register {name}: {answer.text}")

    def start(self, *, detach: bool = False, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve"],
                env=self.env, stdout=log, stderr=log, start_new_session=detach,
            )  # fmt: skip
        for _ in poll(timeout, 0.1):
            if self.client.healthy():
                return
            if self.process.poll() is not None:
                break
        raise UpError(f"control plane did not start: {self.log.read_text()[-2000:]}")

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
    token = api_token(settings, create=True)  # made here, before the control plane starts and reads the same file
    client = FleetClient(settings.client_url, token=token)
    if not client.healthy():
        env = {**os.environ, "LITEFLEET_STORE_IP": settings.store_ip, "LITEFLEET_IMAGE": built.tag}
        plane = ControlPlaneProcess(env, settings.client_url, log_file)
        plane.start(detach=True)
        assert plane.process is not None
        pid_file.write_text(str(plane.process.pid))
    yield f"control   {settings.client_url} (database {settings.fleet_database_url}; logs: {log_file})"
    try:
        nodes = client.request("GET", "/v1/nodes", http_timeout=10)["items"]
        if not nodes:
            body = {
                "name": "local",
                "engine_url": os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
                "address": "127.0.0.1",
            }
            client.request("POST", "/v1/nodes", json_body=body, http_timeout=30)
            nodes = [{"name": "local"}]
    except CliError as exc:
        raise UpError(f"could not list or register nodes: {exc}") from None
    yield f"nodes     {', '.join(node['name'] for node in nodes)}"


def down(settings: Settings) -> Iterator[str]:
    pid_file = settings.state_dir / "control-plane.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in poll(15, 0.1):
                if exited(pid):
                    break
        except ProcessLookupError:
            pass
        pid_file.unlink()
        yield "control   stopped"
    embedded_store(_effective(settings)).down()
    yield "store     stopped"
