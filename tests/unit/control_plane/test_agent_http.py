"""What an agent answers is untrusted: a hostile /readyz can never become a number the fleet DB cannot hold."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.drivers.agent_http import MAX_READYZ_BYTES, MAX_TXID, AgentHttp, Readiness

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize(
    "body",
    [
        [],
        "ready",
        {"replication": []},
        {
            "replication": {
                "local_txid": 2**80,
                "replica_txid": -1,
                "lag_txids": "12",
                "seconds_since_sync": 1e300,
                "unconfirmed_commits": -3,
            }
        },
        {"replication": {"local_txid": True, "replica_txid": 1.5, "seconds_since_sync": float("nan")}},
    ],
)
def test_hostile_readyz_answers_become_no_numbers(body: Any) -> None:
    readiness = Readiness.parse(200, body)
    assert (readiness.local_txid, readiness.replica_txid, readiness.lag_txids) == (None, None, None)
    assert readiness.seconds_since_sync is None and readiness.unconfirmed_commits is None


@given(st.integers(min_value=0, max_value=599), JSON)
def test_any_json_parses_into_bounded_numbers(status: int, body: Any) -> None:
    readiness = Readiness.parse(status, {"replication": body} if isinstance(body, dict) else body)
    for txid in (readiness.local_txid, readiness.replica_txid, readiness.lag_txids, readiness.unconfirmed_commits):
        assert txid is None or 0 <= txid <= MAX_TXID
    seconds = readiness.seconds_since_sync
    assert seconds is None or 0 <= seconds < 3.2e8
    assert readiness.ready is (status == 200)


class _Agent(BaseHTTPRequestHandler):
    """A /readyz that answers what the test sets, and records the bearer token it was sent."""

    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}
    tokens: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.tokens.append(self.headers.get("Authorization", ""))
        status, body = self.answers[self.headers.get("Authorization", "").removeprefix("Bearer ")]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agent_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_probe_reads_readiness_over_http_and_anything_else_is_no_answer(agent_url: str) -> None:
    ready = {"status": "ready", "replication": {"local_txid": 7, "replica_txid": 6, "lag_txids": 1}}
    _Agent.answers.update(
        {
            "good": (200, json.dumps(ready).encode()),
            "starting": (503, b'{"status": "starting"}'),
            "refused": (401, b'{"detail": "bad token"}'),
            "garbage": (200, b"<html>"),
            "huge": (200, b'{"pad": "' + b"x" * (MAX_READYZ_BYTES + 10) + b'"}'),
        }
    )
    api = AgentHttp()
    assert api.readyz(agent_url, "good") == Readiness(ready=True, local_txid=7, replica_txid=6, lag_txids=1)
    assert api.readyz(agent_url, "starting") == Readiness(ready=False)
    assert [api.readyz(agent_url, token) for token in ("refused", "garbage", "huge")] == [None, None, None]
    assert _Agent.tokens[0] == "Bearer good"
    with socket.socket() as unused:  # a port nothing listens on: no answer, at once
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert api.readyz(f"http://127.0.0.1:{port}", "good", timeout=1) is None
    assert api.readyz("ftp://127.0.0.1:1", "good") is None


def test_a_probe_is_bounded_in_all_by_its_timeout_and_deep_json_is_no_answer(agent_url: str) -> None:
    """A hostile agent trickling its answer a byte at a time holds a probe for the probe's timeout, not for as
    long as it keeps sending; an answer nested past the JSON parser's depth is no answer, not an exception that
    would end the whole probe round."""
    _Agent.answers["deep"] = (200, b"[" * 30_000 + b"]" * 30_000)
    assert AgentHttp().readyz(agent_url, "deep") is None

    listener = socket.create_server(("127.0.0.1", 0))

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100:
                time.sleep(0.1)
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    began = time.monotonic()
    assert AgentHttp().readyz(f"http://127.0.0.1:{listener.getsockname()[1]}", "good", timeout=1.0) is None
    assert time.monotonic() - began < 2.5, "the trickle held the probe past its timeout"
    listener.close()


def test_a_probe_ends_at_the_answer_s_length_when_the_agent_keeps_the_connection_open() -> None:
    """`Connection: close` asked, a keep-alive answer given: the probe reads `Content-Length` bytes and is done,
    where reading to the connection's end waited out the timeout and reported a ready agent as silent."""
    listener = socket.create_server(("127.0.0.1", 0))
    body = json.dumps({"status": "ready", "replication": {"local_txid": 3, "replica_txid": 3}}).encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    release = threading.Event()

    def keep_open() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(answer[:20])  # the head in two parts: the length is read once the head is whole
            time.sleep(0.05)
            connection.sendall(answer[20:])
            release.wait(10)

    threading.Thread(target=keep_open, daemon=True).start()
    began = time.monotonic()
    try:
        readiness = AgentHttp().readyz(f"http://127.0.0.1:{listener.getsockname()[1]}", "good", timeout=3.0)
        took = time.monotonic() - began
    finally:
        release.set()
        listener.close()
    assert readiness == Readiness(ready=True, local_txid=3, replica_txid=3)
    assert took < 1.5, f"the probe waited {took:.2f}s for a connection the agent kept open"


def _answering(raw: bytes) -> tuple[str, socket.socket]:
    """A one-shot server that sends `raw` to whatever asks, then keeps the connection open for a moment."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(raw)
            time.sleep(1.5)

    threading.Thread(target=answer, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}",  # past int()'s 4,300 digits
        b"HTTP/1.1 " + b"2" * 5000 + b" OK\r\nContent-Length: 2\r\n\r\n{}",  # a status line likewise
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\n{}",  # two lengths that disagree
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n{}",
    ],
)
def test_a_hostile_head_is_no_answer_never_an_exception(raw: bytes) -> None:
    url, listener = _answering(raw)
    try:
        assert AgentHttp().readyz(url, "good", timeout=1.0) is None
    finally:
        listener.close()
