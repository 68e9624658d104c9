"""A follower incarnation (warm moves): gen g+1 restores gen g's replica while gen g still serves, and becomes the
agent only when the control plane promotes it.

`follow(identity)` runs in the entrypoint (LITEFLEET_FOLLOW=1) after the secrets arrived and before the fence
check. It never reads or writes CURRENT and never writes to the store: it runs `litestream restore -f` of
RESTORE_FROM_URL into the volume's database (a copy, rebuilt from scratch on every start until promotion) and
waits. The control plane promotes it once the source stopped with a proven final sync and CURRENT names this
generation: `python -m agent_image.container.follower promote` (docker exec; on stdin one line of the incarnation's
own `AgentSecrets`, as `secrets_in` takes them, then one `Promotion` line) writes the secrets file, then
RUN_DIR/promote.json. The first promotion usually comes faster, on the follower's own stdin (created open, as a pool
container's: the control plane attaches through the engine instead of starting a Python process, ~0.05 s against
~0.3 s): the same two lines, checked and written the same way (`accept`), answered on stdout with the JSON line
`{"accepted": <promote's exit code>, "error": "...", "nonce": <the order's>}`, then `{"promoted": 0, ...}` once
promoted (5 and why when the follower fails); then stdin is closed. The control plane takes only lines with its
order's nonce as answers (a re-sent order may reach a container whose tenant code writes to stdout).

The follower then waits until Litestream's `<db>-txid` file reaches the source's final txid (bounded), stops the
restore, checks the copy (`_check`: its rebuild was checked too, before the source stopped), marks the volume's
database as its own and returns: the
entrypoint goes on as for any start (fence check, schema on the "volume" path), then serves in this process with
Litestream as its child (`warm.serve`, as a pool container: the follower imported the agent server while it
followed). A follower with a memory allowance (SERVING_MEMORY_MB) first waits until its cgroup shows the agent's
limit (`await_serving_limit`). A restart after that finds the mark and starts as a normal agent.

`promote` returns once the follower is promoted (its restore exited, the copy checked and marked), so the control
plane can lower the container's memory limit (the follower's allowance) before the agent server starts.

`python -m agent_image.container.follower status` prints `{"txid": N|null, "promoted": bool}`: how far the copy
is (what the control plane waits on before it stops the source).

Exit codes: as the entrypoint's; 5 (restore_failed) when the restore dies or the tail is not applied in time; 8
(replica_corrupt) when the rebuilt copy fails Litestream's integrity check, before anything was followed.

`promote` runs inside a warm move's downtime as a fresh Python process (docker exec): it imports only the contract
and the secrets writer. Litestream's client, the identity (http.client, the S3 client) and structlog, ~0.25-0.35 s
of imports in the image (`python -X importtime`), are imported by `follow`, which runs long before."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent_image import contract
from agent_image.container._files import Lines, poll_line, sync_directory
from agent_image.container.secrets_in import write_secrets
from agent_image.contract import AgentSecrets, IdentityError, Promotion, StartRefused

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

    from agent_image.container.identity import AgentIdentity

ORDER_BYTES = 4096  # the order's line at most
ORDER_LINES_BYTES = contract.MAX_SECRETS_BYTES + ORDER_BYTES  # a line on stdin at most (the secrets', the order's)
TXID_SUFFIX = "-txid"  # where `restore -f` records the txid it applied (litestream.followed_txid_path)


def applied_txid(db_path: Path) -> int | None:
    """The last transaction `restore -f` applied to the copy, None before the first (or while unreadable)."""
    try:
        return int(Path(f"{db_path}{TXID_SUFFIX}").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def promoted(data_dir: Path) -> bool:
    return (data_dir / contract.PROMOTED_MARK).exists()


def follow(
    identity: AgentIdentity,
    *,
    meanwhile: Callable[[], object] = lambda: None,
    stdin: int | None = None,
    answer: Callable[[str], None] = lambda line: None,
    poll: float = 0.05,
) -> None:
    """Follow until promoted (see the module docstring); returns with the volume's database ready to serve.
    `meanwhile()` runs once the restore started (the entrypoint imports the agent server there: none of it is
    tenant code). With `stdin` (a file descriptor: the control plane's attach channel) the promotion's two lines may
    come there too, taken as `promote` takes them; `answer` gets the outcome lines (module docstring). Raises
    StartRefused (restore_failed) when the restore dies or the tail does not arrive in time."""
    import subprocess

    import structlog

    from agent_image.container import litestream

    log = structlog.get_logger("agent_image.follower")
    if promoted(identity.data_dir):
        return
    assert identity.restore_from_url is not None  # the contract refuses FOLLOW without it
    identity.data_dir.mkdir(parents=True, exist_ok=True)
    promotion_path = identity.run_dir / contract.PROMOTION_FILE
    promotion_path.unlink(missing_ok=True)  # an order is for the process that was running when it was written
    for leftover in identity.data_dir.glob(identity.db_path.name + "*"):  # a copy is rebuilt, never trusted
        leftover.unlink(missing_ok=True)
    document = litestream.agent_config(identity, identity.restore_from_url, socket=False)
    config = litestream.write_config(document, identity.run_dir / "follow.json")
    # the rebuilt copy is checked (INTEGRITY_CHECK) before it follows: a corrupt replica fails here, before the
    # source stops, not in the downtime (what it applies later is checked at promotion, `_check`)
    command = litestream.follow_command(
        config, identity.db_path, identity.db_path, identity.follow_interval, integrity_check=identity.integrity_check
    )
    # its output goes to stderr (stdout carries only the answers to the control plane's attach), read on the way
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=litestream.environment(),
    )
    output = _Tee(process)
    log.info("follower.following", source=identity.restore_from_url, pid=process.pid)
    lines = None if stdin is None else Lines(stdin, ORDER_LINES_BYTES)
    nonce = ""  # the order's, once it came: every answer after it carries it
    try:
        try:
            meanwhile()
            order, channel = _wait_for_order(process, output, promotion_path, poll, lines, identity, answer)
            nonce = order.nonce
            ordered = time.monotonic()
            _apply_tail(identity, process, order, poll)
            applied = time.monotonic()
        finally:
            litestream.terminate(process, 10)  # the restore's memory is freed before the agent starts
        litestream.followed_txid_path(identity.db_path).unlink(missing_ok=True)
        _check(identity)
    except StartRefused as exc:
        said = {"promoted": contract.EXIT_RESTORE_FAILED, "error": f"{exc.code}: {exc}"[:300], "nonce": nonce}
        answer(json.dumps(said))
        raise
    _mark_promoted(identity.data_dir)
    answer(json.dumps({"promoted": 0, "error": "", "nonce": order.nonce}))
    log.info(
        "follower.promoted",
        txid=order.txid,
        channel=channel,
        tail_s=round(applied - ordered, 3),
        checked_s=round(time.monotonic() - applied, 3),  # the restore stopped, the copy checked and marked
    )


class _Tee:
    """Copies the restore's output to the container's stderr line by line, and notes when Litestream refused the
    rebuilt copy (its integrity check failed: the source's replica is corrupt)."""

    MARK = b"integrity check failed"

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.corrupt = False
        self._thread = threading.Thread(target=self._copy, args=(process,), name="follower-restore-log", daemon=True)
        self._thread.start()

    def _copy(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            self.corrupt = self.corrupt or self.MARK in line
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()

    def finished(self, timeout: float = 5.0) -> _Tee:
        """Once the restore exited: the rest of its output copied (bounded)."""
        self._thread.join(timeout)
        return self


def _wait_for_order(
    process: subprocess.Popen[bytes],
    output: _Tee,
    path: Path,
    poll: float,
    lines: Lines | None,
    identity: AgentIdentity,
    answer: Callable[[str], None],
) -> tuple[Promotion, str]:
    """The order, from RUN_DIR/promote.json (written by `promote`, or here from the two lines on stdin), and which
    channel brought it ("stdin" or "exec")."""
    secrets_line: bytes | None = None
    channel = "exec"
    while True:
        if process.poll() is not None:
            if output.finished().corrupt:
                raise StartRefused(
                    "replica_corrupt",
                    contract.EXIT_REPLICA_CORRUPT,
                    "the copy rebuilt from the source's replica fails its integrity check: the replica is corrupt",
                )
            raise StartRefused(
                "restore_failed", contract.EXIT_RESTORE_FAILED, f"litestream restore -f exited {process.returncode}"
            )
        if path.exists():
            try:
                return Promotion.parse(path.read_bytes()), channel
            except IdentityError as exc:
                raise StartRefused("restore_failed", contract.EXIT_RESTORE_FAILED, str(exc)) from None
        lines, line = poll_line(lines, poll)
        if line is None:
            continue
        if secrets_line is None:
            secrets_line = line
        else:
            code, error, taken = accept(secrets_line, line, identity.secrets_path, identity.run_dir)
            secrets_line = None
            answer(json.dumps({"accepted": code, "error": error, "nonce": "" if taken is None else taken.nonce}))
            channel = "stdin" if code == 0 else channel


def _apply_tail(identity: AgentIdentity, process: subprocess.Popen[bytes], order: Promotion, poll: float) -> None:
    deadline = time.monotonic() + order.timeout
    while (applied_txid(identity.db_path) or 0) < order.txid:
        if process.poll() is not None or time.monotonic() > deadline:
            raise StartRefused(
                "restore_failed",
                contract.EXIT_RESTORE_FAILED,
                f"follower applied txid {applied_txid(identity.db_path)}, not the source's final {order.txid}, "
                f"within {order.timeout:g}s",
            )
        time.sleep(poll)


def _check(identity: AgentIdentity) -> None:
    """The copy about to become the agent must be a sound database: `quick_check` (or `integrity_check`, the agent's
    INTEGRITY_CHECK), as the cold restore's `-integrity-check` asks, on the exact bytes that will serve. The copy's
    rebuild was checked too (`litestream.follow_command`), before the source stopped, but what came after it (the
    following and the tail) was not: Litestream checks each LTX file's own checksum, not that the pages in it, or
    the chain of files, rebuild a sound database, and the replica can be corrupt while the source's local file is
    fine (README, "the Store auto-checkpoint bug"): then the rollback this refusal causes is what saves the tenant.
    Opened read-only (a missing file is an error, not an empty database) and closed before the agent opens it."""
    if identity.integrity_check == "none":
        return
    pragma = "quick_check" if identity.integrity_check == "quick" else "integrity_check"
    refusal = f"followed copy fails {pragma}"
    if not identity.db_path.is_file():
        raise StartRefused("restore_failed", contract.EXIT_RESTORE_FAILED, "followed copy is missing")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{identity.db_path}?mode=ro", uri=True)) as connection:
            answer = connection.execute(f"PRAGMA {pragma}").fetchone()
    except sqlite3.Error as exc:
        raise StartRefused("restore_failed", contract.EXIT_RESTORE_FAILED, f"{refusal}: {exc}") from None
    if answer is None or answer[0] != "ok":
        raise StartRefused("restore_failed", contract.EXIT_RESTORE_FAILED, refusal)


def _mark_promoted(data_dir: Path) -> None:
    mark = data_dir / contract.PROMOTED_MARK
    with mark.open("w") as file:
        file.write("promoted\n")
        file.flush()
        os.fsync(file.fileno())
    sync_directory(data_dir)


def write_order(order: Promotion, path: Path) -> None:
    """Write the promotion atomically (the follower never reads half a file). Writing it twice is harmless."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(order.to_json())
    os.replace(temporary, path)


CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
ALLOWANCE_TIMEOUT = 90.0  # seconds for the control plane's `docker update` after the promotion (~0.1 s; the
# control plane waits up to 60 s for an engine's answer, and fails the move at once when the update is refused)


def memory_limit_bytes(paths: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> int | None:
    """This container's memory limit as its cgroup shows it (v2, then v1); None when unlimited or not shown."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None
    return None


def await_serving_limit(
    limit_mb: int, *, paths: tuple[Path, ...] = CGROUP_MEMORY_LIMITS, timeout: float = ALLOWANCE_TIMEOUT
) -> None:
    """Return once the container's memory limit is at most `limit_mb`: a promoted follower's allowance has ended
    (the control plane lowers it once `promote` returned, beside the fence check and the schema) before any tenant
    code runs. Raises StartRefused when it is not lowered in time, or the limit cannot be read: fail closed, the move
    rolls back and the source serves again. Returns at once on a restart (the lowered limit stays)."""
    deadline = time.monotonic() + timeout
    while (limit := memory_limit_bytes(paths)) is None or limit > limit_mb * 1024 * 1024:
        if time.monotonic() > deadline:
            shown = "not shown" if limit is None else f"{limit // (1024 * 1024)} MiB"
            raise StartRefused(
                "memory_allowance_kept",
                contract.EXIT_RESTORE_FAILED,
                f"memory limit is {shown}, not the agent's {limit_mb} MiB, {timeout:g}s after the promotion",
            )
        time.sleep(0.01)


# seconds `promote` waits beyond the order's timeout: the copy's check (3.6 s at 1 GB here) and the mark; under the
# 15 s the control plane gives the exec beyond the same timeout (drivers/agent_spec.py), so its answer comes first
PROMOTION_MARGIN = 12.0


def await_promotion(data_dir: Path, seconds: float, poll: float = 0.02) -> int:
    """`promote` returns only once the follower marked the volume's database its own (0), i.e. its `restore -f`
    has exited: the control plane then lowers the container's memory limit from the follower's allowance to the
    agent's while the entrypoint's fence check and Litestream start run, before the agent server (tenant code)
    starts. 4 when that did not happen within `seconds` (the follower failed: its container exits 5)."""
    deadline = time.monotonic() + seconds
    while not promoted(data_dir):
        if time.monotonic() > deadline:
            print(f"follower: not promoted within {seconds:g}s", file=sys.stderr)
            return 4
        time.sleep(poll)
    return 0


def accept(
    secrets_raw: bytes, order_raw: bytes, secrets_path: Path, run_dir: Path
) -> tuple[int, str, Promotion | None]:
    """Check and write the promotion's two lines, the incarnation's own secrets then the order (the follower reads
    the secrets once it sees the order): `promote`'s exit code, its one-line reason (a field or a path, never a
    value) and the order (None when the lines do not parse). Writing the same promotion twice is harmless."""
    try:
        secrets = AgentSecrets.parse(secrets_raw)
        order = Promotion.parse(order_raw)
    except IdentityError as exc:
        return 2, f"invalid: {exc}", None
    try:
        write_secrets(secrets, secrets_path)
        write_order(order, run_dir / contract.PROMOTION_FILE)
    except OSError as exc:
        return 3, f"cannot write the promotion: {exc.strerror or exc}", order
    return 0, "", order


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data_dir = Path(os.environ.get(contract.DATA_DIR, "/data"))
    db_path = data_dir / "agent.db"
    if args == ["status"]:
        print(json.dumps({"txid": applied_txid(db_path), "promoted": promoted(data_dir)}))
        return 0
    if args == ["promote"]:
        # two lines: the incarnation's own secrets (as `secrets_in` takes them), then the order; one exec for both
        secrets_raw = sys.stdin.buffer.readline(contract.MAX_SECRETS_BYTES + 1)
        order_raw = sys.stdin.buffer.readline(ORDER_BYTES)
        run_dir = Path(os.environ.get(contract.RUN_DIR, "/tmp/litefleet"))
        secrets_path = Path(os.environ.get(contract.SECRETS_FILE, contract.DEFAULT_SECRETS_FILE))
        code, error, order = accept(secrets_raw, order_raw, secrets_path, run_dir)
        if code or order is None:
            print(f"follower: {error}", file=sys.stderr)
            return code
        return await_promotion(data_dir, order.timeout + PROMOTION_MARGIN)
    print("usage: python -m agent_image.container.follower status|promote", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
