"""The control plane's side of an agent's HTTP surface: `/readyz`, `/admin/drain`, in-flight counts.

Every call sends a bearer token (agent_image/SECURITY-NOTES.md section 5): the incarnation's agent token, or the
tenant's admin token for `/admin/*`. Tokens are never logged or put in an error message.

Everything an agent answers is untrusted: it is parsed into a few typed numbers or treated as no answer. Every
call has a short timeout of its own (one hostile or frozen agent slows only itself)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from control_plane.timing import poll


class AgentNotReady(RuntimeError):
    code = "agent_not_ready"


class AgentExited(AgentNotReady):
    """The agent's container exited while it was being waited for."""


MAX_TXID = 2**62  # what a BIGINT column holds with room to spare; an agent claiming more is lying


def _int(value: Any) -> int | None:
    """A txid or count from an agent: a JSON integer in [0, 2**62], else nothing (never a DB overflow)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TXID:
        return value
    return None


def _float(value: Any) -> float | None:
    """Seconds from an agent: a finite, non-negative JSON number below ten years, else nothing."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 3.2e8:
        return float(value)
    return None


@dataclass(frozen=True)
class Readiness:
    """One answer of `/readyz`: ready or not, and the agent's own view of its replication."""

    ready: bool
    local_txid: int | None = None
    replica_txid: int | None = None
    lag_txids: int | None = None
    seconds_since_sync: float | None = None
    unconfirmed_commits: int | None = None

    @classmethod
    def parse(cls, status: int, body: Any) -> Readiness:
        replication = body.get("replication") if isinstance(body, dict) else None
        replication = replication if isinstance(replication, dict) else {}
        return cls(
            ready=status == 200,
            local_txid=_int(replication.get("local_txid")),
            replica_txid=_int(replication.get("replica_txid")),
            lag_txids=_int(replication.get("lag_txids")),
            seconds_since_sync=_float(replication.get("seconds_since_sync")),
            unconfirmed_commits=_int(replication.get("unconfirmed_commits")),
        )

    @property
    def replicated(self) -> bool:
        """Ready, and its replica holds at least one transaction (what a started incarnation waits for)."""
        return self.ready and (self.replica_txid or 0) >= 1


class AgentApi(Protocol):
    """What the fleet asks of a running agent (`AgentHttp` over HTTP; tests hand in an in-memory one)."""

    def readyz(self, url: str, token: str, timeout: float = 2.0) -> Readiness | None: ...
    def drain(self, url: str, admin_token: str) -> int: ...
    def in_flight(self, url: str, token: str) -> int: ...


def bearer(token: str) -> dict[str, str]:
    """The header every agent call carries (an agent answers 401 without it on every route but /healthz)."""
    return {"Authorization": f"Bearer {token}"}


_pooled: httpx.Client | None = None
_pooled_lock = threading.Lock()


def pooled_client() -> httpx.Client:
    """One connection pool for the agent calls of this process that are not probes (drains, in-flight counts;
    thread-safe): a move's drain does not pay a new client's SSL context (~50 ms of CPU, even for plain HTTP).
    `/readyz` probes go without it (`get_once`): every agent is an origin of its own."""
    global _pooled
    with _pooled_lock:
        if _pooled is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=128)
            _pooled = httpx.Client(limits=limits)
        return _pooled


MAX_READYZ_BYTES = 64 * 1024  # a readiness answer is a few hundred bytes; more is an agent wasting our memory


def get_once(url: str, path: str, headers: dict[str, str], timeout: float, limit: int) -> tuple[int, bytes] | None:
    """GET `path` of the `http://host:port` at `url` on a connection of its own (`Connection: close`): the status
    and body, or None when the whole answer does not come within `timeout` seconds (one deadline for the connect
    and every read together: an agent trickling a byte a second holds a probe `timeout`, not hours), is over
    `limit` bytes, or is not HTTP. The answer ends at its `Content-Length` (a server that keeps the connection
    open anyway does not hold the probe), else at the connection's end. A chunked body comes back as sent (it then
    parses as nothing)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port or 80
    deadline = time.monotonic() + timeout
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    request = "\r\n".join([*lines, *(f"{name}: {value}" for name, value in headers.items()), "", ""]).encode()
    received = bytearray()
    head_end = -1  # where the head ends, once it is in
    whole: int | None = None  # the answer's length, when the head gives one
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.sendall(request)
            while len(received) <= limit + 16 * 1024:  # the body's limit, and room for the head
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                connection.settimeout(left)
                chunk = connection.recv(65536)
                if not chunk:
                    break
                searched_to = len(received)
                received += chunk
                if head_end < 0:  # looked for only in what came since (minus a split "\r\n\r\n"): parsed once
                    head_end = received.find(b"\r\n\r\n", max(0, searched_to - 3))
                    if head_end >= 0:
                        length = _content_length(bytes(received[:head_end]))
                        if length == _CONFLICTING:
                            return None
                        whole = None if length is None else head_end + 4 + int(length)
                if whole is not None and len(received) >= whole:
                    del received[whole:]
                    break
            else:
                return None
    except OSError:
        return None
    head, found, body = bytes(received).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if not found or len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not _is_status(status[1]):
        return None
    return (int(status[1]), body) if len(body) <= limit else None


_CONFLICTING = -1  # two Content-Length headers that disagree: no answer


def _content_length(head: bytes) -> int | None:
    """The head's `Content-Length`: None when it has none (the body ends with the connection), `_CONFLICTING` when
    it has two that differ or one that is not a plain number of at most 18 digits (Python's `int` refuses strings
    of more than 4,300 digits with an exception: an agent's header must never raise)."""
    found: set[bytes] = set()
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            found.add(value.strip())
    if not found:
        return None
    value = found.pop()
    if found or not value.isdigit() or len(value) > 18:
        return _CONFLICTING
    return int(value)


def _is_status(code: bytes) -> bool:
    return len(code) == 3 and code.isdigit()


class AgentHttp:
    def readyz(self, url: str, token: str, timeout: float = 2.0) -> Readiness | None:
        """The agent's `/readyz`, or None when it does not answer within `timeout` in all (or answers something
        that is not JSON or over 64 KiB, or refuses the token: a 401 is not readiness).

        One plain HTTP/1.1 request on a connection of its own, read within one deadline (`get_once`), not the
        pooled httpx client: every agent is an origin of its own (a published port), so a probe round of
        thousands cannot reuse keep-alive connections anyway, and httpx's pool looks at each of its connections
        for every request: ~10 ms of CPU a probe with 100 origins in the pool, against ~0.35 ms here
        (bench/scale.py `heartbeat_round_s`)."""
        answer = get_once(url, "/readyz", bearer(token), timeout, MAX_READYZ_BYTES)
        if answer is None or answer[0] in (401, 403):
            return None
        try:
            return Readiness.parse(answer[0], json.loads(answer[1]))
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            return None

    def drain(self, url: str, admin_token: str) -> int:
        """Tell the agent to stop taking work; returns its workflows in flight. Raises httpx.HTTPError, ValueError."""
        answer = pooled_client().post(f"{url}/admin/drain", headers=bearer(admin_token), timeout=10)
        answer.raise_for_status()
        return int(answer.json().get("in_flight", 0))

    def in_flight(self, url: str, token: str) -> int:
        answer = pooled_client().get(f"{url}/v1/workflows?limit=1", headers=bearer(token), timeout=10)
        answer.raise_for_status()
        counts = answer.json()["counts"]
        return int(counts.get("PENDING", 0) + counts.get("RUNNING", 0))


def wait_ready(
    url: Callable[[], str | None],
    *,
    token: str,
    timeout: float,
    replicated: bool = False,
    check: Callable[[], None] = lambda: None,
    agents: AgentApi | None = None,
    interval: float = 0.03,
    what: str = "agent",
) -> str:
    """Poll `/readyz` at the address `url()` gives (None: not published yet) until it answers ready (and, with
    `replicated`, its replica holds a transaction); returns that address. `check()` runs every round and raises
    to give up early (the container exited); AgentNotReady when `timeout` runs out."""
    api = agents or AgentHttp()
    for _ in poll(timeout, interval):
        check()
        address = url()
        if address:
            readiness = api.readyz(address, token, timeout=3)
            if readiness is not None and (readiness.replicated if replicated else readiness.ready):
                return address
    raise AgentNotReady(f"{what} not ready after {timeout:.0f}s")
