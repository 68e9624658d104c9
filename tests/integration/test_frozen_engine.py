"""A frozen node engine is declared down within `interval x grace + timeout`, against the real Docker engine.

The node's engine URL is a loopback TCP relay (a process of this test) to the host engine's socket; freezing it
with SIGSTOP is what a frozen dockerd looks like from the control plane: the kernel still accepts connections,
nothing answers. The real engine keeps running untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from control_plane.db.engine import make_engine, migrate
from control_plane.db.models import Event, Node, NodeState
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.health import HealthMonitor
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

RELAY = """
import socket, sys, threading
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(64)
print(listener.getsockname()[1], flush=True)
def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
while True:
    client, _ = listener.accept()
    engine = socket.socket(socket.AF_UNIX)
    engine.connect(sys.argv[1])
    threading.Thread(target=pipe, args=(client, engine), daemon=True).start()
    threading.Thread(target=pipe, args=(engine, client), daemon=True).start()
"""


@pytest.fixture
def relay(docker_client: Any) -> Iterator[tuple[subprocess.Popen[str], int]]:
    sock = "/var/run/docker.sock"
    process = subprocess.Popen([sys.executable, "-c", RELAY, sock], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    try:
        yield process, port
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(10)


def test_a_frozen_engine_is_down_within_the_bound(tmp_path: Path, relay: tuple[subprocess.Popen[str], int]) -> None:
    process, port = relay
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    migrate(url)
    engine = make_engine(url)
    settings = Settings(state_dir=tmp_path, heartbeat_interval=1.0, node_grace_heartbeats=3, heartbeat_timeout=1.0)
    bound = settings.heartbeat_interval * settings.node_grace_heartbeats + settings.heartbeat_timeout
    with Session(engine) as session:
        session.add(Node(name="relayed", engine_url=f"tcp://127.0.0.1:{port}"))
        session.commit()
    fleet = Fleet(engine, settings, FakeReplicas(), FakeCredentials())  # no agents here: the store is not asked
    monitor = HealthMonitor(engine, fleet, settings)
    monitor.heartbeat()  # the real engine answers through the relay
    with Session(engine) as session:
        node = session.get(Node, "relayed")
        assert node is not None and node.missed_heartbeats == 0 and node.last_seen_at
    monitor.start()
    try:
        time.sleep(0.3)
        os.kill(process.pid, signal.SIGSTOP)
        froze_at = time.time()
        deadline = time.monotonic() + bound + 10
        while time.monotonic() < deadline:
            with Session(engine) as session:
                node = session.get(Node, "relayed")
                assert node is not None
                if node.state == NodeState.down:
                    down = session.exec(select(Event).where(Event.kind == "node.down")).one()
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the frozen engine was never declared down")
    finally:
        monitor.stop()
        os.kill(process.pid, signal.SIGCONT)
    detected = down.at - froze_at
    print(f"real engine behind a frozen relay declared down after {detected:.2f}s (bound {bound:.2f}s)")
    assert detected <= bound + 0.5  # the bound, plus the round's one short write
