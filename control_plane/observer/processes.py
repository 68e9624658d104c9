"""The litestream processes the observer runs: generated configs, `restore -f` followers, one-off restores, and
the store-side position of a replica. Every process is recorded by pid under `root/pids` and stopped by pid.

A follower dies with its control plane: it is started with PR_SET_PDEATHSIG, so a `kill -9` of the control plane
(which runs no close()) ends its followers too, instead of leaving them polling the store until a successor happens
to start on the same cache_dir (`reap_leftovers` still covers what the signal cannot: a pid file of a follower
that outlived a crash between fork and prctl). The kernel sends that signal when the *thread* that forked exits,
so every follower is forked by one spawner thread that lives as long as the observer."""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from agent_image.container import litestream
from control_plane.observer.models import AgentRef, NoStateAt, ObserverError, ObserverSettings, copy_key
from control_plane.storage import ObjectStorage

log = structlog.get_logger("control_plane.observer")


class Litestream:
    """Starts and stops the litestream processes of one observer (thread-safe under the observer's `lock`).
    `closed` is the observer's: once set, no new restore outlives it."""

    def __init__(
        self,
        storage: ObjectStorage,
        settings: ObserverSettings,
        root: Path,
        credentials: tuple[str, str],
        lock: threading.RLock,
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.root = root
        self.lock = lock
        self.closed = False
        self._credentials = credentials
        self._restores: set[subprocess.Popen[str]] = set()  # one-off restores running now
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="litefleet-follower-spawner")

    def config(self, ref: AgentRef) -> tuple[Path, Path]:
        """The generated litestream config naming this replica (written once), and the database path it names
        (a placeholder that never exists: restores always go to `-o`)."""
        key = copy_key(ref)
        placeholder = self.root / "configs" / f"{key}.db"
        path = self.root / "configs" / f"{key}.json"
        if not path.exists():
            url = self.storage.replica_url(ref.tenant, ref.agent, ref.generation)
            document = litestream.config(placeholder, url, self.storage.endpoint, self.storage.region)
            litestream.write_config(document, path.with_suffix(".tmp.json"))
            path.with_suffix(".tmp.json").replace(path)
        return path, placeholder

    def start_follower(self, ref: AgentRef, copy: Path, log_path: Path) -> subprocess.Popen[bytes]:
        """Start `litestream restore -f` of `ref` into `copy` (restored from scratch)."""
        config, placeholder = self.config(ref)
        remove_copy(copy)
        command = litestream.follow_command(config, placeholder, copy, self.settings.follow_interval)
        with log_path.open("ab") as out, _refused_once_closed():
            process = self._spawner.submit(
                subprocess.Popen,
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=litestream.environment(self._credentials),
                start_new_session=True,  # a Ctrl-C meant for the control plane is not delivered to followers
                preexec_fn=_die_with(os.getpid()),
            ).result()
        # Pid, start time and copy: enough for a later observer to recognise this process (and not a reused pid).
        (self.root / "pids" / f"{process.pid}.pid").write_text(f"{_start_time(process.pid)}\n{copy}")
        return process

    def forget(self, process: subprocess.Popen[Any]) -> None:
        (self.root / "pids" / f"{process.pid}.pid").unlink(missing_ok=True)

    def stop(self, process: subprocess.Popen[Any]) -> None:
        litestream.terminate(process, self.settings.stop_timeout)
        self.forget(process)

    def stop_all(self, followers: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM all at once, then wait: closing 100 followers costs one stop_timeout at most, not 100."""
        processes: list[subprocess.Popen[Any]] = [*followers, *self._restores]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout
        for process in processes:
            litestream.terminate(process, max(0.1, deadline - time.monotonic()))
        self._spawner.shutdown(wait=False)

    def reap_leftovers(self) -> None:
        """Stop followers left by a previous observer on this cache_dir that died without close(): only the pids
        recorded here that are still a litestream process started at the recorded time (never a reused pid)."""
        for pid_file in (self.root / "pids").glob("*.pid"):
            pid = int(pid_file.stem)
            started, _, copy = pid_file.read_text().partition("\n")
            if started and started == _start_time(pid) and _command_name(pid) == "litestream":
                _kill_pid(pid, self.settings.stop_timeout)
                log.warning("observer.leftover.stopped", pid=pid, copy=copy)
            pid_file.unlink(missing_ok=True)

    def restore(self, ref: AgentRef, output: Path, *, at: dt.datetime | None = None, txid: int | None = None) -> int:
        """A one-off restore of `ref` into `output` (replaced atomically); returns the restored txid."""
        config, placeholder = self.config(ref)
        scratch = self.root / "tmp" / f"{output.name}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
        command = [litestream.binary(), "restore", "-config", str(config), "-json", "-o", str(scratch)]
        if self.settings.integrity_check != "none":
            command += ["-integrity-check", self.settings.integrity_check]
        if at is not None:
            command += ["-timestamp", at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")]
        if txid is not None:
            command += ["-txid", f"{txid:016x}"]
        command.append(str(placeholder))
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=litestream.environment(self._credentials),
            start_new_session=True,
        )
        with self.lock:
            self._restores.add(process)
            closed = self.closed
        try:
            if closed:  # close() ran while this restore was being started: it must not outlive the observer
                litestream.terminate(process, self.settings.stop_timeout)
                raise ObserverError("observer is closed")
            stdout, stderr = process.communicate(timeout=self.settings.restore_timeout)
        except subprocess.TimeoutExpired:
            litestream.terminate(process, self.settings.stop_timeout)
            remove_copy(scratch)
            raise ObserverError(f"restore of {ref} timed out after {self.settings.restore_timeout:.0f}s") from None
        finally:
            with self.lock:
                self._restores.discard(process)
        if process.returncode != 0:
            remove_copy(scratch)
            message = (stderr or stdout).strip().splitlines()
            last = message[-1] if message else f"rc={process.returncode}"
            if "no matching backup" in last or "no snapshots" in last.lower():
                raise NoStateAt(f"{ref} holds no state at {at or (f'txid {txid}' if txid else 'all')}: {last}")
            raise ObserverError(f"restore of {ref} failed: {last}")
        summary = json.loads(stdout[stdout.index("{") :])
        output.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(scratch) + suffix).unlink(missing_ok=True)
        scratch.replace(output)
        return int(summary["txid"], 16)

    # -- internals: upkeep ----------------------------------------------------------------------------------------

    def replica_state(self, ref: AgentRef, txid: int) -> tuple[int, float | None, float | None]:
        """The replica's newest txid, when it was uploaded, and when the oldest file holding a transaction after
        `txid` was uploaded (None when the replica has nothing after it). From LTX names
        `<level>/<min>-<max>.ltx` (hex), lowest level first: compaction rewrites files later at higher levels."""
        prefix = self.storage.replica_prefix(ref.tenant, ref.agent, ref.generation)
        newest: tuple[int, int, float | None] = (0, 0, None)  # txid, -level, uploaded
        first_missing: tuple[int, float] | None = None  # level, uploaded
        for entry in self.storage.objects(prefix):
            level_text, _, name = entry["Key"][len(prefix) :].rpartition("/")
            if not (name.endswith(".ltx") and "-" in name and level_text.isdigit()):
                continue
            level, high = int(level_text), int(name[:-4].split("-")[1], 16)
            uploaded = entry["LastModified"].timestamp()
            if (high, -level) > newest[:2]:
                newest = (high, -level, uploaded)
            if high > txid and (first_missing is None or (level, uploaded) < first_missing):
                first_missing = (level, uploaded)
        return newest[0], newest[2], None if first_missing is None else first_missing[1]


# -- processes and files --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _refused_once_closed() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:  # the spawner was shut down by stop_all: the observer is closed
        raise ObserverError("observer is closed") from exc


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with(parent: int) -> Callable[[], None]:
    """What a follower runs between fork and exec: SIGTERM when its parent goes, and exit now if it already went
    (the parent died before prctl took effect, so the signal would never come)."""

    def arm() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(0)

    return arm


def _kill_pid(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`: a follower still in its first restore can miss a SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is reaped by its parent, not by us)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def remove_copy(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-txid", "-txid.tmp", ".tmp"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-300:]
