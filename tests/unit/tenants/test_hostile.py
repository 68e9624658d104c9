"""The hostile bundle reports outcomes instead of raising (its targets here are loopback ports this test owns)."""

import socket
from pathlib import Path

from agent_image import Runtime
from tenants import hostile


def test_probe_tells_a_listener_from_a_closed_port(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    runtime = Runtime(str(tmp_path / "hostile.db"), hostile)
    runtime.recover()
    try:
        targets = [["open", "127.0.0.1", listener.getsockname()[1]], ["closed", "127.0.0.1", closed_port]]
        assert runtime.start(hostile.probe, (targets, 1.0)).result(10) == {"open": "connected", "closed": "refused"}
        fetched = runtime.start(hostile.fetch, ([["closed", f"http://127.0.0.1:{closed_port}/"]], 1.0)).result(10)
        assert fetched["closed"].startswith("error:")
    finally:
        runtime.close()
        listener.close()
