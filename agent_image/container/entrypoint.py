"""The agent container's entrypoint: identity -> secrets -> fence -> restore -> config -> `litestream replicate -exec`.

`python -m agent_image.container.entrypoint` runs as the container's first process and replaces itself with Litestream,
so Litestream is PID 1 and owns the agent server: if Litestream dies, the container dies with it, and the agent
can never keep writing unreplicated.

Secrets: the container starts with no secret in its environment and waits (up to LITEFLEET_SECRETS_TIMEOUT) for
the control plane to write its secrets file (`agent_image.container.secrets_in`, through `docker exec`). The S3 keys
then go into Litestream's config file (0600, in the run directory on the secrets tmpfs), never into an environment.

A pooled container (LITEFLEET_POOLED=1, `pool.py`) starts with no identity: it imports the agent server (`warm.py`)
and waits for the control plane's claim (identity and secrets, on its stdin or through the same `docker exec`
channel), then goes on as a new agent that keeps this process: Litestream becomes its child (`warm.serve`).

A follower (LITEFLEET_FOLLOW=1, `follower.py`) first follows RESTORE_FROM_URL without touching CURRENT or the store
and continues here only once promoted, with the followed database on its volume. It imports the agent server while
it follows and serves in-process once promoted, as a pool container does (the promotion is inside a move's
downtime; a new Python process importing the server was ~0.5-0.8 s of it).

Exit codes before Litestream takes over: 2 bad identity, 3 stale generation (CURRENT names another one),
4 object store unreachable, 5 restore or database check failed, 6 no (valid) secrets file in time, 7 stopped
(SIGTERM) before serving. After: the agent's (0 = stopped with a proven final sync, 1 = anything else)."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

import structlog

from agent_image import contract
from agent_image._phases import mark
from agent_image._store import Store
from agent_image.container import follower, litestream, pool, warm
from agent_image.container._files import sync_directory
from agent_image.container.fence import check_fence
from agent_image.container.identity import AgentIdentity, IdentityError
from agent_image.contract import StartRefused
from agent_image.logs import configure_logging

log = structlog.get_logger("agent_image.entrypoint")


def prepare_database(identity: AgentIdentity) -> str:
    """Make sure the database exists and holds the tenant's history. Returns where it came from.

    Order: a database already on the volume (a restart of this incarnation) -> this generation's own replica (the
    container was recreated) -> the restore-from replica, which must exist -> a new, empty database, only when no
    restore-from was given.

    A restore goes to `<db>.restoring` and is renamed to the database only once Litestream checked it: a restore cut
    short (a stop, a kill) leaves no database a restart would take for the volume's own."""
    if identity.db_path.exists():
        return "volume"
    identity.data_dir.mkdir(parents=True, exist_ok=True)
    restoring = identity.db_path.with_name(identity.db_path.name + ".restoring")
    for leftover in identity.data_dir.glob(restoring.name + "*"):
        leftover.unlink()
    for url, required in ((identity.replica_url, False), (identity.restore_from_url, True)):
        if url is None:
            continue
        document = litestream.agent_config(identity, url, socket=False)
        config = litestream.write_config(document, identity.run_dir / "restore.json", read_back=False)
        if not required and litestream.no_replica(config):
            continue  # a new agent: Litestream never reads this config (its read-back is a process, ~0.1 s)
        litestream.read_back_config(document, config)
        check = identity.integrity_check
        restored = litestream.restore(
            config, identity.db_path, if_replica_exists=not required, integrity_check=check, output=restoring
        )
        if restored:
            os.replace(restoring, identity.db_path)
            sync_directory(identity.data_dir)
            return url
    return "new"


def initialise_schema(identity: AgentIdentity) -> None:
    """Create or migrate the runtime's schema now, so Litestream starts on a WAL database that exists."""
    Store(str(identity.db_path), synchronous=identity.synchronous).close()


def agent_command(identity: AgentIdentity) -> str:
    return shlex.join([sys.executable, "-m", "agent_image", *agent_arguments(identity)])


def agent_arguments(identity: AgentIdentity) -> list[str]:
    """`agent_image serve`'s arguments for this agent (a child of Litestream, or in-process in a pool container)."""
    return [
        "serve",
        "--replicated",
        "--bundle",
        identity.bundle,
        "--db",
        str(identity.db_path),
        "--host",
        "0.0.0.0",
        "--port",
        str(identity.port),
        "--synchronous",
        identity.synchronous,
    ]


def main() -> None:
    configure_logging()
    signal.signal(signal.SIGTERM, _stop_before_serving)
    try:
        env: dict[str, str] = dict(os.environ)
        pooled = pool.pooled(env)
        if pooled:
            warm.preload()
            env = pool.wait_for_claim(
                env,
                ready=lambda: log.info("agent.pooled", path=str(pool.claim_path(env))),
                stdin=sys.stdin.fileno(),
                answer=_answer,
            )
            _close_stdin()  # nothing written there after the claim reaches the agent (tenant code runs here)
            mark("claimed")
            os.environ.clear()  # Litestream and the agent server (`AgentIdentity.from_env()`) read the claimed one
            os.environ.update(env)
        identity = AgentIdentity.from_env(env)
    except (IdentityError, ValueError) as exc:
        print(f"litefleet-agent: bad_identity: {exc}", file=sys.stderr)
        raise SystemExit(contract.EXIT_BAD_IDENTITY) from None
    try:  # the secrets, Litestream's config (with the S3 keys) and its socket live here: a tmpfs, never the image
        identity.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(identity.run_dir, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        print(
            f"litefleet-agent: bad_identity: {contract.RUN_DIR}={identity.run_dir} is unusable ({exc.strerror}): "
            "mount a tmpfs there owned by the agent (see agent_image/SECURITY-NOTES.md)",
            file=sys.stderr,
        )
        raise SystemExit(contract.EXIT_BAD_IDENTITY) from None
    log.info("agent.waiting_for_secrets", path=str(identity.secrets_path), timeout=identity.secrets_timeout)
    try:
        identity = identity.wait_for_secrets()
    except IdentityError as exc:
        print(f"litefleet-agent: no_secrets: {exc}", file=sys.stderr)
        raise SystemExit(contract.EXIT_NO_SECRETS) from None
    started = time.monotonic()
    try:
        if identity.follow:  # a warm move's successor: no fence check, no store write until promoted
            follower.follow(identity, meanwhile=warm.preload, stdin=sys.stdin.fileno(), answer=_answer)
            _close_stdin()  # nothing written there after the promotion reaches the agent (tenant code runs here)
            identity = identity.with_secrets()  # the promotion delivered the incarnation's own secrets
            started = time.monotonic()
        check_fence(identity)
        document = litestream.agent_config(identity, identity.replica_url)
        config = litestream.write_config(document, identity.run_dir / "litestream.json", read_back=False)
        read_back = _Beside(lambda: litestream.read_back_config(document, config))  # a Litestream process
        try:
            source = prepare_database(identity)
            initialise_schema(identity)
        except Exception as exc:
            raise StartRefused("restore_failed", contract.EXIT_RESTORE_FAILED, str(exc)) from None
        finally:
            read_back.join()
        read_back.result()  # before Litestream uses the config
    except StartRefused as exc:
        _refused(exc)
    size = identity.db_path.stat().st_size
    log.info("agent.database_ready", source=source, bytes=size, seconds=round(time.monotonic() - started, 3))
    mark("configured", source=source)
    if pooled or identity.follow:  # the server was imported while idle: serve in this process, Litestream its child
        limited = functools.partial(_await_serving_limit, identity)
        raise SystemExit(warm.serve(identity, config, agent_arguments(identity), before_tenant_code=limited))
    argv = [litestream.binary(), "replicate", "-config", str(config), "-exec", agent_command(identity)]
    os.execve(argv[0], argv, litestream.environment())


def _refused(exc: StartRefused) -> NoReturn:
    log.error("agent.refused", code=exc.code, error=str(exc))
    print(f"litefleet-agent: {exc.code}: {exc}", file=sys.stderr)
    raise SystemExit(exc.exit_code) from None


def _await_serving_limit(identity: AgentIdentity) -> None:
    """A promoted follower runs no tenant code before its cgroup shows the agent's memory limit (the control plane
    lowers it once the promotion returned, beside the fence check and Litestream's start)."""
    if identity.serving_memory_mb is not None:
        try:
            follower.await_serving_limit(identity.serving_memory_mb)
        except StartRefused as exc:
            _refused(exc)


def _stop_before_serving(signum: int, frame: FrameType | None) -> None:
    """SIGTERM before the agent server serves (pooled, waiting for secrets or a promotion, following, restoring):
    there is no final sync to prove, so exit now; Litestream and a follower's `restore -f` die with the container
    (this is PID 1). Without a handler, PID 1 ignores SIGTERM and `docker stop` waited out its timeout for the
    SIGKILL. Litestream's `-exec` (cold) and `warm.serve` (pooled) hand SIGTERM to the agent's proven stop."""
    os.write(2, b"litefleet-agent: stopped: SIGTERM before serving\n")  # not print: the main thread may be mid-write
    os._exit(contract.EXIT_STOPPED_BEFORE_SERVING)


class _Beside(threading.Thread):
    """`work()` on a thread of its own; `result()` re-raises what it raised."""

    def __init__(self, work: Callable[[], object]) -> None:
        super().__init__(name="litefleet-beside", daemon=True)
        self.work = work
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            self.error = exc

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def _answer(line: str) -> None:
    """A claim's or a promotion's outcome, to whoever attached to this container's stdin and stdout (the control
    plane)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _close_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


if __name__ == "__main__":
    main()
