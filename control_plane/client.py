"""The one client of the `/v1` API, for the CLI, `litefleet up`, the demo, the benchmarks and the e2e tests:
requests with the API token, errors as one line with a meaningful exit code, tables, op progress.

Exit codes: 0 done, 1 the operation failed, 2 the request was refused (4xx), 3 the control plane does not answer,
4 still running when --timeout ran out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from control_plane.timing import poll

EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FleetClient:
    def __init__(self, api_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        headers = {"authorization": f"Bearer {token}"} if token else {}
        # One connection pool for every request of this client (httpx clients are thread-safe): a new client per
        # request costs ~50 ms of CPU (its SSL context), which a polling loop or a writer pays at every call.
        self._http = httpx.Client(headers=headers)

    def send(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        """One request to the API with the token, as it answers (`kwargs` as httpx takes them: json, params).
        Raises httpx.HTTPError when the control plane does not answer."""
        return self._http.request(method, f"{self.api_url}{path}", timeout=timeout or self.timeout, **kwargs)

    def request(
        self, method: str, path: str, *, json_body: Any = None, http_timeout: float | None = None, **params: Any
    ) -> Any:
        """The answer's JSON; CliError (with the API's code and message) for a refusal or no answer."""
        query = {key: value for key, value in params.items() if value is not None}
        try:
            answer = self.send(method, path, json=json_body, params=query, timeout=http_timeout)
        except httpx.HTTPError as exc:
            raise CliError(f"control plane at {self.api_url} does not answer ({type(exc).__name__})", 3) from None
        if answer.status_code >= 400:
            try:
                body = answer.json()
                message = f"{body['code']}: {body['message']}"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {answer.status_code}"
            raise CliError(message, EXIT_REFUSED if answer.status_code < 500 else EXIT_FAILED)
        return answer.json() if answer.content else None

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Each page of a list route (`{"items": [...], "next_cursor": ...}`), following `next_cursor` to the end."""
        cursor = params.pop("cursor", None)
        while True:
            page: dict[str, Any] = self.request("GET", path, cursor=cursor, **params)
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list route, page after page (`limit` sets the page size)."""
        return [item for page in self.pages(path, **params) for item in page["items"]]

    def healthy(self) -> bool:
        """The control plane answers `/healthz`."""
        try:
            return self.send("GET", "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait(
        self, method: str, path: str, *, json_body: Any = None, timeout: float = 600.0, **params: Any
    ) -> dict[str, Any]:
        """Run a long action with `?wait=true` and return its operation, finished unless `timeout` ran out."""
        op: dict[str, Any] = self.request(
            method, path, json_body=json_body, http_timeout=timeout + 30, wait="true", timeout=timeout, **params
        )
        return op

    def follow(self, op: dict[str, Any], echo: Callable[[str], None], timeout: float) -> dict[str, Any]:
        """Print each new step of the operation as it happens until it finishes."""
        shown = 0
        for _ in poll(timeout, 0.5):
            for step in op["steps"][shown:]:
                agent = f" agent {step['agent']}" if step.get("agent") is not None else ""
                echo(f"  {_clock(step['at'])} {step['step']}{agent}  {step.get('message', '')}".rstrip())
            shown = len(op["steps"])
            if op["state"] in ("succeeded", "failed"):
                return op
            op = self.request("GET", f"/v1/operations/{op['id']}")
        raise CliError(f"operation {op['id']} still {op['state']} after {timeout:.0f}s", EXIT_TIMEOUT)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value > 1e9:
        return _clock(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
