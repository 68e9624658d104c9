"""A local stand-in for the research agent's tool service (search, summarise, publish) on 127.0.0.1.

`summarise` fails with HTTP 503 for its first `summarise_failures` calls, to exercise the step's retries.
Used by the bundle's tests and by `make demo`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubTools:
    def __init__(self, summarise_failures: int = 3) -> None:
        self.calls: dict[str, int] = {}
        self.summarise_failures = summarise_failures
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _answer(self, tool: str, body: dict[str, Any]) -> dict[str, Any] | None:
        self.calls[tool] = self.calls.get(tool, 0) + 1
        if tool == "summarise" and self.calls[tool] <= self.summarise_failures:
            return None
        if tool == "search":
            return {"results": [f"{body.get('q')} #1", f"{body.get('q')} #2"]}
        if tool == "summarise":
            return {"summary": f"{body.get('topic')}: {len(body.get('findings', []))} findings"}
        return {"url": f"https://reports.example/{body.get('id')}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        tools = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                answer = tools._answer(self.path.strip("/"), body)
                if answer is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self._server.shutdown()
