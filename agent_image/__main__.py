"""`litefleet-agent serve --bundle MODULE_OR_PATH --db FILE --port N` (also `python -m agent_image serve ...`).

argparse, not Typer: this runs in every tenant container, where each imported module costs memory."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from agent_image import contract
from agent_image._store import SYNCHRONOUS_MODES
from agent_image.logs import configure_logging

if TYPE_CHECKING:
    from agent_image import Runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litefleet-agent", description="Run one litefleet tenant agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a workflow bundle over HTTP")
    serve.add_argument("--bundle", required=True, help="module name (tenants.hello) or path to a .py/package")
    serve.add_argument("--db", required=True, help="the SQLite file holding all of this agent's state")
    serve.add_argument("--host", default=os.environ.get(contract.AGENT_HOST, "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get(contract.AGENT_PORT, "8080")))
    serve.add_argument(
        "--synchronous",
        default=os.environ.get(contract.SYNCHRONOUS, "FULL"),
        choices=SYNCHRONOUS_MODES,
        help="SQLite synchronous mode (FULL: a committed step survives power loss)",
    )
    serve.add_argument(
        "--replicated",
        action="store_true",
        help="run under `litestream replicate -exec` (set up by agent_image.container.entrypoint): watch the "
        "CURRENT fence, report replication, prove the final sync on exit",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    configure_logging()
    from agent_image import AgentError, Runtime, load_bundle
    from agent_image.server import AgentServer, create_app

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
        server = AgentServer(create_app(lambda: runtime), runtime, host=args.host, port=args.port)
        server.run()
        # A SIGTERM'd agent that parked its workflows at step boundaries did its job: exit 0 (uvicorn would
        # re-raise the signal).
        raise SystemExit(0 if server.started else 1)
    raise SystemExit(_serve_replicated(runtime, args))


def _serve_replicated(runtime: Runtime, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or until superseded, then prove the final sync. 0 only when it is proven."""
    from agent_image.container.fence import FenceWatch
    from agent_image.container.identity import AgentIdentity
    from agent_image.container.replication import ReplicationMonitor, final_sync
    from agent_image.server import AgentServer, create_app

    identity = AgentIdentity.from_env()
    monitor = ReplicationMonitor(identity)
    server = AgentServer(create_app(lambda: runtime, replication=monitor), runtime, host=args.host, port=args.port)

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


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
