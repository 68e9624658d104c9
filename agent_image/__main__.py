"""`litefleet-agent serve --bundle MODULE_OR_PATH --db FILE --port N` (also `python -m agent_image serve ...`).

argparse, not Typer: this runs in every tenant container, where each imported module costs memory."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from agent_image.logs import configure_logging

if TYPE_CHECKING:
    from agent_image.runtime import Runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litefleet-agent", description="Run one litefleet tenant agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a workflow bundle over HTTP")
    serve.add_argument("--bundle", required=True, help="module name (tenants.hello) or path to a .py/package")
    serve.add_argument("--db", required=True, help="the SQLite file holding all of this agent's state")
    serve.add_argument("--host", default=os.environ.get("LITEFLEET_AGENT_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("LITEFLEET_AGENT_PORT", "8080")))
    serve.add_argument(
        "--synchronous",
        default=os.environ.get("LITEFLEET_SYNCHRONOUS", "FULL"),
        choices=["OFF", "NORMAL", "FULL", "EXTRA"],
        help="SQLite synchronous mode (FULL: a committed step survives power loss)",
    )
    serve.add_argument(
        "--replicated",
        action="store_true",
        help="run under `litestream replicate -exec` (set up by agent_image.entrypoint): watch the CURRENT fence, "
        "report replication, prove the final sync on exit",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configure_logging()
    from agent_image.bundle import load_bundle
    from agent_image.errors import AgentError
    from agent_image.runtime import Runtime
    from agent_image.server import create_app

    try:
        bundle = load_bundle(args.bundle)
    except ImportError as exc:
        print(f"litefleet-agent: cannot load bundle: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:  # open before serving, so a second agent on the same file fails in one line, not a traceback
        runtime = Runtime(args.db, bundle, synchronous=args.synchronous)
    except AgentError as exc:
        print(f"litefleet-agent: {exc.code}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if not args.replicated:
        server = _server(create_app(lambda: runtime), args, runtime)
        server.run()
        # A SIGTERM'd agent that parked its workflows at step boundaries did its job: exit 0 (uvicorn would
        # re-raise the signal).
        raise SystemExit(0 if server.started else 1)
    raise SystemExit(_serve_replicated(runtime, args))


def _serve_replicated(runtime: Runtime, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or until superseded, then prove the final sync. 0 only when it is proven."""
    from agent_image.identity import AgentIdentity
    from agent_image.replication import FenceWatch, ReplicationMonitor, final_sync
    from agent_image.server import create_app

    identity = AgentIdentity.from_env()
    monitor = ReplicationMonitor(identity)
    server = _server(create_app(lambda: runtime, replication=monitor), args, runtime)

    def superseded(_: int | None) -> None:
        runtime.drain()
        server.should_exit = True

    fence = FenceWatch(identity, superseded)
    monitor.start()
    fence.start()
    server.run()
    monitor.stop()
    fence.stop()
    record = final_sync(identity, "superseded" if fence.superseded else "stopped")
    return 0 if record.proven and server.started else 1


def _server(app: Any, args: argparse.Namespace, runtime: Runtime) -> _Server:
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, timeout_graceful_shutdown=30
    )
    return _Server(config, runtime)


class _Server(uvicorn.Server):
    """uvicorn's Server, minus re-raising the shutdown signal after a graceful exit, plus interrupting the
    runtime as soon as shutdown begins: uvicorn waits (up to its graceful timeout) for open requests before the
    app's lifespan ends, and a long poll (`?wait=60`) is an open request. Interrupted, the runtime answers it at
    once and parks its workflows, instead of running steps until the poll or the timeout ends."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        # Now, not at uvicorn's next 0.1 s tick; on a thread, since a signal handler must not take the
        # runtime's lock (the interrupted main thread might hold it).
        threading.Thread(target=self.runtime.interrupt, name="litefleet-interrupt", daemon=True).start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await asyncio.to_thread(self.runtime.interrupt)  # also when shutdown came from should_exit (superseded)
        await super().shutdown(sockets)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
