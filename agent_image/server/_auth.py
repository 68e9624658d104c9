"""Bearer-token authentication of the agent API (issue 10), as a pure ASGI middleware in front of every route.

- `/healthz` is open (liveness only, says nothing about the tenant).
- `/admin/*` needs the control plane's admin token.
- everything else (`/v1/*`, `/readyz`, `/metrics`, unknown paths too: no route map for strangers) needs the
  incarnation's agent token or the admin token.

Tokens are compared with `hmac.compare_digest` against both tokens every time, so neither the answer's timing nor
its body says which one was close. A refused request gets 401 `unauthorized` (no or unknown token) or 403
`forbidden` (the agent token on an admin route); the token is never echoed or logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz"})
ADMIN_PREFIX = "/admin/"


@dataclass(frozen=True)
class Tokens:
    """The two tokens an agent accepts. `agent`: the incarnation's own (minted per incarnation by the control
    plane, sent by its router); `admin`: the control plane's, also accepted on every route."""

    agent: str = field(repr=False)
    admin: str = field(repr=False)

    def role(self, presented: str | None) -> str | None:
        """ "admin", "agent", or None. Both comparisons always run (constant time in which token matched)."""
        given = (presented or "").encode()
        is_admin = hmac.compare_digest(given, self.admin.encode())
        is_agent = hmac.compare_digest(given, self.agent.encode())
        if presented is None:
            return None
        return "admin" if is_admin else "agent" if is_agent else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    """ASGI middleware: lets a request through only with the token its path needs (see module docstring)."""

    def __init__(self, app: ASGIApp, tokens: Tokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        role = self.tokens.role(bearer(scope.get("headers", [])))
        if role is None:
            await _refuse(send, 401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
            return
        if role != "admin" and scope["path"].startswith(ADMIN_PREFIX):
            await _refuse(send, 403, "forbidden", "this route needs the control plane's admin token")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="litefleet-agent"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
