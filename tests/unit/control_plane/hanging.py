"""A real local HTTP server whose answers a test scripts, and which can freeze: while frozen it accepts
connections (the kernel does, as for a SIGSTOPped process) and reads requests but never answers them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, Any]  # status, JSON body
Handler = Callable[[str, str, bytes], Answer]  # method, path, body -> answer


class HangingServer:
    def __init__(self, handler: Handler, *, delay: float = 0.0) -> None:
        self.handler = handler
        self.delay = delay
        self.frozen = threading.Event()
        self._closing = threading.Event()
        self.requests: list[tuple[str, str]] = []
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path))
                while outer.frozen.is_set() and not outer._closing.is_set():
                    time.sleep(0.01)
                if outer._closing.is_set():
                    return
                if outer.delay:
                    time.sleep(outer.delay)
                status, payload = outer.handler(self.command, self.path, body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up on a frozen answer: as a thawed process would find it

            do_GET = do_POST = do_HEAD = _answer

        class _Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 would make a burst of connections wait for SYN retries

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HangingServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def serving(handler: Handler, *, delay: float = 0.0) -> Iterator[HangingServer]:
    server = HangingServer(handler, delay=delay).start()
    try:
        yield server
    finally:
        server.close()


def docker_engine(method: str, path: str, _: bytes) -> Answer:
    """The two routes a heartbeat uses of a Docker engine's API (version negotiation and `/_ping`)."""
    if path.endswith("/version"):
        return 200, {"ApiVersion": "1.43", "MinAPIVersion": "1.24", "Version": "24.0.0"}
    if path.endswith("/_ping"):
        return 200, "OK"
    return 404, {"message": f"no route {method} {path}"}
