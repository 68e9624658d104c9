"""The agent's uvicorn server: one that stops the runtime first and waits for requests second."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from agent_image._phases import mark
from agent_image._runtime import Runtime

GRACEFUL_SECONDS = 30


class AgentServer(uvicorn.Server):
    """uvicorn's Server, minus re-raising the shutdown signal after a graceful exit, plus interrupting the
    runtime as soon as shutdown begins: uvicorn waits (up to its graceful timeout) for open requests before the
    app's lifespan ends, and a long poll (`?wait=60`) is an open request. Interrupted, the runtime answers it at
    once and parks its workflows, instead of running steps until the poll or the timeout ends."""

    def __init__(self, app: Starlette, runtime: Runtime, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            # named, not detected: "auto" tries to import httptools and two websocket libraries at every start
            http="h11",
            ws="none",
            lifespan="on",
            interface="asgi3",
        )
        super().__init__(config)
        self.runtime = runtime
        self._woken: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        # Now, not at uvicorn's next 0.1 s tick; on a thread, since a signal handler must not take the
        # runtime's lock (the interrupted main thread might hold it).
        threading.Thread(target=self.runtime.interrupt, name="litefleet-interrupt", daemon=True).start()
        if self._woken is not None:  # the shutdown starts now too (a move's downtime waits for it)
            loop, woken = self._woken
            loop.call_soon_threadsafe(woken.set)

    async def main_loop(self) -> None:
        """uvicorn's loop, which looks at `should_exit` every 0.1 s; this one also wakes at once on SIGTERM."""
        woken = asyncio.Event()
        self._woken = (asyncio.get_running_loop(), woken)
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            mark("listening", port=self.config.port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await asyncio.to_thread(self.runtime.interrupt)  # also when shutdown came from should_exit (superseded)
        await super().shutdown(sockets)
