"""A pool container's agent, started before its claim: one process that has imported the agent server while it
idled, and serves in-process once claimed, with Litestream as its child.

A cold container's entrypoint replaces itself with `litestream replicate -exec "python -m agent_image serve ..."`:
Litestream is PID 1 and the agent its child, a new Python process that imports the server (~0.5 s of imports and
the interpreter's start, after Litestream's own start). A pool container does that work while it waits for a claim
(`preload`), so it keeps its process: after the claim it starts `litestream replicate` (no `-exec`) and runs the
same `serve --replicated` in-process (`serve`). What the other shape guarantees holds here too:

- Litestream replicates everything the agent commits: it starts before the agent opens its database, and the
  agent's first replication probe waits for Litestream's control socket.
- The agent never runs unreplicated: when Litestream exits while the agent serves, the agent process exits at once
  (exit 1; it is PID 1, so the container goes with it: what a killed Litestream as PID 1 did to its child). A killed
  agent process (PID 1) takes Litestream with the container.
- The proven stop is the agent's, as before: on SIGTERM it drains, closes the database, forces `litestream sync
  -wait` and writes `shutdown.json`; only then is Litestream told to stop (its own last sync finds nothing new).
  The exit code is the agent's: 0 only for a proven final sync.
- The fence, the identity checks, the secrets channel, the restore and config steps are the entrypoint's, unchanged.

A claimed container that is restarted runs this way again (it is still a pool container): it finds its claim record
and waits for its secrets like any restart."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from agent_image._phases import mark
from agent_image.container import litestream
from agent_image.container.identity import AgentIdentity

log = structlog.get_logger("agent_image.warm")

SOCKET_TIMEOUT = 10.0  # seconds for Litestream's control socket to appear (it takes ~0.05-0.2 s)
STOP_TIMEOUT = 60.0  # seconds for Litestream to exit after the agent stopped (its last sync found nothing new)


def preload() -> None:
    """Import what serving needs (the server, the runtime, uvicorn's protocol, the fence and replication), none of
    it tenant code: the bundle is imported only after the claim, on the tenant's network."""
    import uvicorn.lifespan.on
    import uvicorn.protocols.http.h11_impl  # noqa: F401

    import agent_image.__main__
    import agent_image.container.fence
    import agent_image.container.replication
    import agent_image.server  # noqa: F401
    from agent_image import Runtime, load_bundle  # noqa: F401  (PEP 562: loads the runtime)

    mark("preloaded")


def serve(
    identity: AgentIdentity, config: Path, argv: list[str], before_tenant_code: Callable[[], None] = lambda: None
) -> int:
    """Start Litestream on `config`, serve `agent_image serve argv` in this process, stop Litestream; the agent's
    exit code (0: stopped with a proven final sync). `before_tenant_code()` runs while Litestream starts, before the
    bundle is imported; it refuses by raising SystemExit (Litestream is stopped, its code returned)."""
    from agent_image.__main__ import main as agent_main

    replicate = subprocess.Popen(
        [litestream.binary(), "replicate", "-config", str(config)],
        env=litestream.environment(),
        stdin=subprocess.DEVNULL,
    )
    serving = threading.Event()
    done = threading.Event()

    def watch() -> None:
        code = replicate.wait()
        if not done.is_set():  # Litestream died under a serving agent: nothing it commits would be replicated
            log.error("litestream.exited", code=code, serving=serving.is_set())
            os._exit(1)

    threading.Thread(target=watch, name="litefleet-litestream", daemon=True).start()
    code: int = 1
    try:
        before_tenant_code()
        _import_bundle(identity.bundle)  # while Litestream starts (the serve below finds it imported)
        _wait_for_socket(identity.socket_path, replicate)
        mark("litestream_started")
        serving.set()
        # the entrypoint's handler would exit at once: from here SIGTERM is the agent server's (its proven stop), and
        # dropped, as by a PID 1 with no handler, in the moment before the server installs its own (a handler, not
        # SIG_IGN: a process the bundle starts gets the default back at exec, where SIG_IGN would be inherited)
        signal.signal(signal.SIGTERM, _dropped)
        agent_main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        done.set()
        replicate.terminate()
        try:
            replicate.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            replicate.kill()
            replicate.wait()
    return code


def _dropped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM in the moment before the agent server installs its handler (and after it served, during its proven
    stop, which uvicorn hands back to this one): dropped, as PID 1 with no handler does."""


def _import_bundle(bundle: str) -> None:
    """Import a bundle named as a module (what containers run), ignoring any failure: `serve` imports it again
    (from the module cache, or failing there with its own message and exit code)."""
    if os.path.exists(bundle):
        return  # a path is executed anew by every load: leave it to `serve`
    with contextlib.suppress(Exception):  # `serve` reports it
        importlib.import_module(bundle)


def _wait_for_socket(path: Path, replicate: subprocess.Popen[bytes]) -> None:
    """Until Litestream's control socket exists (the agent's first probe and its final sync go through it)."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while not path.exists() and replicate.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
