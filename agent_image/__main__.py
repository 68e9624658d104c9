"""`litefleet-agent serve --bundle MODULE_OR_PATH --db FILE --port N` (also `python -m agent_image serve ...`).

Authentication: with `--secrets-file` (default `$LITEFLEET_SECRETS_FILE`; the `AgentSecrets` JSON, S3 keys optional
here) every route but /healthz needs its agent or admin token. Without one, a standalone agent serves without
authentication only on a loopback address (warning once); on any other address it refuses to start (exit 2).
A `--replicated` agent (in a container) always reads its tokens from its secrets file.

argparse, not Typer: this runs in every tenant container, where each imported module costs memory."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

import structlog

from agent_image import contract
from agent_image._store import SYNCHRONOUS_MODES
from agent_image.logs import configure_logging

if TYPE_CHECKING:
    from agent_image import Bundle, Runtime
    from agent_image.server._auth import Tokens


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
        "--secrets-file",
        default=os.environ.get(contract.SECRETS_FILE),
        help="JSON file with agent_token and admin_token (see agent_image.contract.AgentSecrets)",
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
    from agent_image import AgentError, load_bundle
    from agent_image._phases import mark
    from agent_image.server import AgentServer, create_app

    try:
        bundle = load_bundle(args.bundle)
    except ImportError as exc:
        print(f"litefleet-agent: cannot load bundle: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    mark("serve_imported", bundle=bundle.name)
    try:  # open before serving, so a second agent on the same file fails in one line, not a traceback
        runtime = open_runtime(args, bundle)
    except AgentError as exc:
        print(f"litefleet-agent: {exc.code}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    mark("runtime_opened")
    if not args.replicated:
        tokens = _standalone_tokens(args.host, args.secrets_file)
        server = AgentServer(create_app(lambda: runtime, tokens=tokens), runtime, host=args.host, port=args.port)
        server.run()
        # A SIGTERM'd agent that parked its workflows at step boundaries did its job: exit 0 (uvicorn would
        # re-raise the signal).
        raise SystemExit(0 if server.started else 1)
    raise SystemExit(_serve_replicated(runtime, args))


def open_runtime(args: argparse.Namespace, bundle: Bundle) -> Runtime:
    """The agent's runtime over `--db`. Replicated, Litestream alone checkpoints the WAL: a checkpoint of ours
    makes it ship a snapshot of a file we keep changing, a corrupt replica (see `agent_image._store`)."""
    from agent_image import Runtime

    return Runtime(args.db, bundle, synchronous=args.synchronous, checkpoints=not args.replicated)


def _standalone_tokens(host: str, secrets_file: str | None) -> Tokens | None:
    """The tokens of a standalone agent, or None (loopback only); exits 2 in one line otherwise."""
    from agent_image.contract import AgentSecrets, IdentityError
    from agent_image.server._auth import Tokens, is_loopback

    if secrets_file:
        try:
            secrets = AgentSecrets.read(secrets_file, need_s3=False)
        except IdentityError as exc:
            print(f"litefleet-agent: bad_secrets: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return Tokens(secrets.agent_token, secrets.admin_token)
    if not is_loopback(host):
        print(
            f"litefleet-agent: no_token: refusing to serve on {host} without tokens (give --secrets-file)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    structlog.get_logger("agent_image").warning(
        "agent.unauthenticated", host=host, detail="no --secrets-file: anyone on this machine can call this agent"
    )
    return None


def _serve_replicated(runtime: Runtime, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or until superseded, then prove the final sync. 0 only when it is proven."""
    from agent_image.container.fence import FenceWatch
    from agent_image.container.identity import AgentIdentity
    from agent_image.container.replication import (
        ReplicationConfirmer,
        ReplicationMonitor,
        final_sync,
        socket_sync,
    )
    from agent_image.server import AgentServer, create_app
    from agent_image.server._auth import Tokens

    identity = AgentIdentity.from_env().with_secrets()
    monitor = ReplicationMonitor(identity, commits=lambda: runtime.store.commits)
    servers: list[AgentServer] = []

    def superseded(_: int | None) -> None:
        runtime.drain()
        for server in servers:
            server.should_exit = True

    fence = FenceWatch(identity, superseded)
    app = create_app(
        lambda: runtime,
        replication=monitor,
        tokens=Tokens(*identity.tokens),
        lease=fence,
        confirm_replicated=ReplicationConfirmer(socket_sync(identity)).confirm,
        durability=identity.durability,
        durability_timeout=identity.durability_timeout,
    )
    server = AgentServer(app, runtime, host=args.host, port=args.port)
    servers.append(server)
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
