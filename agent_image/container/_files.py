"""File steps the container's processes share, and their reading of the control plane's lines on stdin."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path


def sync_directory(path: Path) -> None:
    """Make the entries just made or renamed in directory `path` durable (its own fsync)."""
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class Lines:
    """Lines from a file descriptor (the container's stdin: the control plane's attach channel) without blocking
    longer than asked (select, then read what is there)."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd, self.limit, self.buffer = fd, limit, b""

    def next(self, timeout: float) -> bytes | None:
        """One line (without its newline; an empty line is b""), None when no whole line came within `timeout`.
        Raises EOFError at end of file (a last line without its newline is returned first). A line longer than
        `limit` is returned as it is, cut: its reader's check refuses it."""
        while b"\n" not in self.buffer and len(self.buffer) <= self.limit:
            readable, _, _ = select.select([self.fd], [], [], timeout)
            if not readable:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                if not self.buffer:
                    raise EOFError
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def poll_line(
    lines: Lines | None, poll: float, sleep: Callable[[float], None] = time.sleep
) -> tuple[Lines | None, bytes | None]:
    """One wait of up to `poll` on an optional stdin channel: the channel (None once it ended: no attach channel,
    stdin was /dev/null, or it closed) and a whole line, or None. Without a channel it only sleeps. An empty line
    is no line of the control plane's (every one is JSON): skipped, where it once ended the channel."""
    if lines is None:
        sleep(poll)
        return None, None
    try:
        return lines, lines.next(poll) or None
    except EOFError:
        return None, None
