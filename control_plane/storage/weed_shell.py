"""One long-lived `weed shell` per store. Starting a session costs ~0.2 s (the Go binary and its master connection),
a command ~0.02-0.05 s, and a new agent's start waits for its key's command. Commands go one at a time on the
session's stdin; each is followed by a command that does not exist, whose answer (`unknown command: <marker>`)
ends its output. A session whose process ended is started again once (a session outlives a store restart: weed
reconnects); one that does not answer in time is killed and the command fails (the next one starts another)."""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import subprocess
import threading
import time
from pathlib import Path
from typing import IO


class ShellEnded(Exception):
    """The session's process ended, or did not answer in time (`timed_out`): its output is unknown."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ShellSession:
    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self._argv, self._cwd, self._env = argv, cwd, env
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def run(self, command: str, timeout: float) -> str:
        """`command`'s output (one or more lines). Raises ShellEnded when no session answered it within `timeout`
        seconds. The output may hold secrets (identities): the caller never logs it."""
        if not self._lock.acquire(timeout=timeout):  # the command before is stuck on a frozen store
            raise ShellEnded(f"the session was busy for {timeout:.0f} s", timed_out=True)
        try:
            try:
                return self._exchange(command, timeout)
            except ShellEnded as ended:  # the session is closed
                if ended.timed_out:  # a frozen store: another session would wait as long again
                    raise
            return self._exchange(command, timeout)  # a new session (this one's process ended): once
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _exchange(self, command: str, timeout: float) -> str:
        """One command in the session (started if need be); closes the session before it raises ShellEnded."""
        process = self._started()
        assert process.stdin is not None and process.stdout is not None
        marker = f"litefleet-end-{secrets.token_hex(8)}"
        end = f"unknown command: {marker}\n".encode()
        _drain(process.stdout)  # what weed printed since the last command (a reconnect's log) is not this one's
        try:
            process.stdin.write(f"{command}\n{marker}\n".encode())
            process.stdin.flush()
        except OSError:
            self._close()
            raise ShellEnded("the session's stdin is closed") from None
        output = b""
        deadline = time.monotonic() + timeout
        while end not in output:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(process.stdout, left):
                self._close()
                raise ShellEnded(f"no answer in {timeout:.0f} s", timed_out=True)
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                self._close()
                raise ShellEnded("the session ended")
            output += chunk
        return output[: output.index(end)].decode(errors="replace")

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                self._argv,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C to the control plane is not its; it ends when its stdin closes
            )
        return self._process

    def _close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel: its pipes are closed anyway
            process.wait(5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _readable(stream: IO[bytes], timeout: float) -> bool:
    """`poll`, not `select`: a control plane of a thousand nodes holds more than 1,024 descriptors, and `select`
    refuses the higher ones."""
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _drain(stream: IO[bytes]) -> None:
    """Discard what is waiting on `stream` without blocking."""
    while _readable(stream, 0) and os.read(stream.fileno(), 65536):
        pass
