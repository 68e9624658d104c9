"""What 1,000 nodes look like to the health monitor, on loopback: every node an address 127.1.x.y with a Docker
engine's few health routes on ENGINE_PORT (`/version`, `/_ping`, `containers/json`, `info`) and its agents'
`/readyz` on AGENT_PORT. One asyncio process answers them all with canned bytes, so what `bench/scale.py`'s
heartbeat and probe figures measure is the control plane's side (threads, clients, the round's DB writes).

    .venv/bin/python bench/fake_fleet_server.py NODES     (prints "ready" once it listens)
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys

ENGINE_PORT, AGENT_PORT = 23750, 23760


def node_address(n: int) -> str:
    return f"127.1.{n // 250}.{n % 250 + 1}"


def _answer(body: object) -> bytes:
    raw = json.dumps(body).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    return head.encode() + raw


VERSION = _answer({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10.24", "Os": "linux"})
PING = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\nOK"
NO_CONTAINERS = _answer([])
INFO = _answer({"Runtimes": {"runc": {"path": "runc"}}, "DefaultRuntime": "runc"})
READY = _answer(
    {
        "status": "ready",
        "replication": {"local_txid": 42, "replica_txid": 42, "lag_txids": 0, "seconds_since_sync": 0.4},
    }
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def _route(path: str) -> bytes:
    path = path.split("?", 1)[0]
    if path.endswith("/_ping"):
        return PING
    if path.endswith("/version"):
        return VERSION
    if path.endswith("/containers/json"):
        return NO_CONTAINERS
    if path.endswith("/info"):
        return INFO
    if path == "/readyz":
        return READY
    return NOT_FOUND


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                (int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0
            )
            if length:
                await reader.readexactly(length)
            writer.write(_route(lines[0].split(" ")[1]))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def main(nodes: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # two listening sockets per node, and the connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hosts = [node_address(n) for n in range(nodes)]
    servers = [await asyncio.start_server(_serve, hosts, port, backlog=512) for port in (ENGINE_PORT, AGENT_PORT)]
    print("ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
