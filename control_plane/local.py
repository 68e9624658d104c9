"""`litefleet up` / `down`: the embedded defaults on one machine, started and stopped by recorded pids."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import docker
import httpx

from control_plane import images
from control_plane.objectstore import exited
from control_plane.server import embedded_store
from control_plane.settings import Settings


class UpError(RuntimeError):
    pass


def _effective(settings: Settings) -> Settings:
    """Containers cannot reach 127.0.0.1: unless told otherwise, bind the store to the local engine's bridge."""
    if "LITEFLEET_STORE_IP" in os.environ or settings.s3_endpoint:
        return settings
    gateway = docker.from_env().networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    return settings.model_copy(update={"store_ip": gateway})


def up(settings: Settings) -> Iterator[str]:
    settings = _effective(settings)
    built = images.build_agent_image(docker.from_env())
    yield f"image     {built.tag} ({'built' if built.built else 'up to date'})"
    store = embedded_store(settings)
    store.up()
    yield f"store     {store.address.endpoint} bucket={settings.bucket} (logs: {store.directory}/weed.log)"
    pid_file = settings.state_dir / "control-plane.pid"
    log_file = settings.state_dir / "control-plane.log"
    if not _healthy(settings):
        env = {**os.environ, "LITEFLEET_STORE_IP": settings.store_ip, "LITEFLEET_IMAGE": built.tag}
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "serve"],
                env=env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + 30
        while not _healthy(settings):
            if process.poll() is not None or time.monotonic() > deadline:
                raise UpError(f"control plane did not start; see {log_file}")
            time.sleep(0.2)
    yield f"control   {settings.client_url} (database {settings.fleet_database_url}; logs: {log_file})"
    nodes = httpx.get(f"{settings.client_url}/v1/nodes", timeout=10).json()
    if not nodes:
        answer = httpx.post(
            f"{settings.client_url}/v1/nodes",
            json={"name": "local", "engine_url": "unix:///var/run/docker.sock", "address": "127.0.0.1"},
            timeout=30,
        )
        if answer.status_code != 201:
            raise UpError(f"could not register the local engine: {answer.text}")
        nodes = [answer.json()]
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


def _healthy(settings: Settings) -> bool:
    try:
        return httpx.get(f"{settings.client_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
