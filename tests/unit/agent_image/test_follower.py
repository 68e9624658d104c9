"""The follower's contract (agent_image/container/follower.py): LITEFLEET_FOLLOW in the environment, the promotion
order through `follower promote` (stdin, written atomically), `follower status` from Litestream's `<db>-txid`
file, and the mark that makes a restarted, promoted follower start as a normal agent. The whole path against real
Docker, SeaweedFS and Litestream is tests/e2e/test_warm_moves.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_image import contract
from agent_image.container import follower
from agent_image.container.identity import AgentIdentity
from agent_image.contract import AgentSecrets, ContainerEnv, IdentityError, Promotion
from tests.unit.agent_image.test_identity import GOOD, SECRETS


def test_follow_is_written_and_read_back_and_needs_a_source() -> None:
    env = ContainerEnv(**{**ContainerEnv.read(GOOD), "follow": True, "follow_interval": 0.5}).to_env()
    assert (env["LITEFLEET_FOLLOW"], env["LITEFLEET_FOLLOW_INTERVAL"]) == ("1", "0.5")
    identity = AgentIdentity.from_env(env)
    assert identity.follow and identity.follow_interval == 0.5
    assert "LITEFLEET_FOLLOW" not in ContainerEnv(**ContainerEnv.read(GOOD)).to_env()
    without_source = {k: v for k, v in env.items() if k != "LITEFLEET_RESTORE_FROM_URL"}
    with pytest.raises(IdentityError, match="LITEFLEET_FOLLOW=1 needs LITEFLEET_RESTORE_FROM_URL"):
        AgentIdentity.from_env(without_source)
    with pytest.raises(IdentityError, match="LITEFLEET_FOLLOW must be one of"):
        AgentIdentity.from_env({**env, "LITEFLEET_FOLLOW": "yes"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"version": 2, "txid": 1}', "version 1"),
        (b'{"txid": -1}', "txid"),
        (b'{"txid": true}', "txid"),
        (b'{"txid": 3, "timeout": 0}', "timeout"),
        (b'{"txid": 3, "nonce": "a b"}', "nonce"),
        (b'{"txid": 3, "nonce": 7}', "nonce"),
    ],
)
def test_a_bad_promotion_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        Promotion.parse(raw)


def _module(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_image.container.follower", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )


def test_promote_writes_the_order_and_status_reads_the_copy(tmp_path: Path) -> None:
    secrets_file = tmp_path / "run" / "secrets" / "identity.json"
    env = {
        contract.DATA_DIR: str(tmp_path / "data"),
        contract.RUN_DIR: str(tmp_path / "run"),
        contract.SECRETS_FILE: str(secrets_file),
    }
    (tmp_path / "data").mkdir()
    status = _module(["status"], env)
    assert json.loads(status.stdout) == {"txid": None, "promoted": False}
    (tmp_path / "data" / "agent.db-txid").write_text("00000000000000ff\n")
    assert json.loads(_module(["status"], env).stdout)["txid"] == 255

    order_lines = SECRETS.to_json() + "\n" + Promotion(255, 12.5).to_json() + "\n"
    waiting = subprocess.Popen(
        [sys.executable, "-m", "agent_image.container.follower", "promote"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert waiting.stdin is not None
    waiting.stdin.write(order_lines)
    waiting.stdin.close()
    for _ in range(200):  # the order arrives, then `promote` waits for the follower to mark its promotion
        if (tmp_path / "run" / contract.PROMOTION_FILE).exists():
            break
        time.sleep(0.02)
    time.sleep(0.3)
    assert waiting.poll() is None, "promote returns only once the follower is promoted (its restore exited)"
    (tmp_path / "data" / contract.PROMOTED_MARK).write_text("promoted\n")
    assert waiting.wait(10) == 0
    order = Promotion.parse((tmp_path / "run" / contract.PROMOTION_FILE).read_bytes())
    assert order == Promotion(255, 12.5)
    assert AgentSecrets.read(secrets_file) == SECRETS, "the incarnation's own secrets, written before the order"
    assert (secrets_file.stat().st_mode & 0o777) == 0o400
    again = _module(["promote"], env, order_lines)
    assert again.returncode == 0, "repeating the order is harmless"
    (tmp_path / "data" / contract.PROMOTED_MARK).unlink()
    late = _module(["promote"], env, SECRETS.to_json() + "\n" + Promotion(255, 0.1).to_json() + "\n")
    assert late.returncode == 4 and "not promoted" in late.stderr, "a follower that never finishes: not done"

    refused = _module(["promote"], env, SECRETS.to_json() + '\n{"txid": "x"}\n')
    assert refused.returncode == 2 and "txid" in refused.stderr
    no_secrets = _module(["promote"], env, Promotion(1).to_json() + "\n")
    assert no_secrets.returncode == 2 and "secrets" in no_secrets.stderr
    assert _module(["bogus"], env).returncode == 2


def test_a_promoted_follower_starts_as_a_normal_agent(tmp_path: Path) -> None:
    """After the mark, `follow` returns at once: the volume's database is this generation's own (no restore -f,
    no rebuild of the copy), and the entrypoint's fence check and "volume" path take over."""
    env = ContainerEnv(**{**ContainerEnv.read(GOOD), "follow": True}).to_env()
    identity = AgentIdentity.from_env({**env, contract.DATA_DIR: str(tmp_path), contract.RUN_DIR: str(tmp_path)})
    identity = identity.with_secrets(SECRETS)
    (tmp_path / "agent.db").write_bytes(b"the promoted database")
    (tmp_path / contract.PROMOTED_MARK).write_text("promoted\n")
    follower.follow(identity)
    assert (tmp_path / "agent.db").read_bytes() == b"the promoted database"


def test_serving_memory_is_written_and_read_back() -> None:
    env = ContainerEnv(**{**ContainerEnv.read(GOOD), "follow": True, "serving_memory_mb": 256}).to_env()
    assert env["LITEFLEET_SERVING_MEMORY_MB"] == "256"
    assert AgentIdentity.from_env(env).serving_memory_mb == 256
    assert AgentIdentity.from_env(GOOD).serving_memory_mb is None
    with pytest.raises(IdentityError, match="LITEFLEET_SERVING_MEMORY_MB must be a whole number >= 1"):
        AgentIdentity.from_env({**env, "LITEFLEET_SERVING_MEMORY_MB": "0"})


def test_a_promoted_follower_serves_only_once_its_allowance_ended(tmp_path: Path) -> None:
    """The cgroup v1 file shows the follower's allowance until the control plane's `docker update` lowers it."""
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v1.write_text(f"{(256 + 768) * 2**20}\n")
    with pytest.raises(contract.StartRefused, match="memory limit is 1024 MiB, not the agent's 256 MiB") as refused:
        follower.await_serving_limit(256, paths=(v2, v1), timeout=0.05)
    assert refused.value.exit_code == contract.EXIT_RESTORE_FAILED

    def lower() -> None:
        time.sleep(0.1)
        v1.write_text(f"{256 * 2**20}\n")

    import threading

    lowering = threading.Thread(target=lower)
    lowering.start()
    started = time.monotonic()
    follower.await_serving_limit(256, paths=(v2, v1), timeout=5)
    assert 0.05 < time.monotonic() - started < 2
    lowering.join()


@pytest.mark.parametrize("shown", [None, "max\n"])
def test_an_unlimited_or_unreadable_limit_is_refused(tmp_path: Path, shown: str | None) -> None:
    path = tmp_path / "memory.max"
    if shown is not None:
        path.write_text(shown)
    with pytest.raises(contract.StartRefused, match="memory limit is not shown"):
        follower.await_serving_limit(256, paths=(path,), timeout=0.02)


def test_the_promotion_taken_on_stdin_is_checked_written_and_answered(tmp_path: Path) -> None:
    """The attach channel: a bad pair of lines is answered with `promote`'s code and the follower keeps waiting; the
    good pair is written as `promote` writes it (secrets 0400, then the order) and answered accepted."""
    env = ContainerEnv(**{**ContainerEnv.read(GOOD), "follow": True}).to_env()
    secrets_file = tmp_path / "run" / "secrets" / "identity.json"
    identity = AgentIdentity.from_env(
        {
            **env,
            contract.DATA_DIR: str(tmp_path / "data"),
            contract.RUN_DIR: str(tmp_path / "run"),
            contract.SECRETS_FILE: str(secrets_file),
        }
    )
    read_end, write_end = os.pipe()
    restore = subprocess.Popen(  # plays `restore -f`
        [sys.executable, "-c", "import time; time.sleep(30)"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    answers: list[dict[str, object]] = []
    try:
        os.write(write_end, (SECRETS.to_json() + '\n{"txid": "x"}\n').encode())
        os.write(write_end, (SECRETS.to_json() + "\n" + Promotion(7, 9.0, nonce="n0nce").to_json() + "\n").encode())
        order, channel = follower._wait_for_order(
            restore,
            follower._Tee(restore),
            tmp_path / "run" / contract.PROMOTION_FILE,
            0.01,
            follower.Lines(read_end, follower.ORDER_LINES_BYTES),
            identity,
            lambda line: answers.append(json.loads(line)),
        )
    finally:
        restore.kill()
        os.close(read_end)
        os.close(write_end)
    assert (order, channel) == (Promotion(7, 9.0, nonce="n0nce"), "stdin")
    assert answers[0]["accepted"] == 2 and "txid" in str(answers[0]["error"])
    assert answers[1] == {"accepted": 0, "error": "", "nonce": "n0nce"}, "the order's nonce: the control plane's key"
    assert AgentSecrets.read(secrets_file) == SECRETS and (secrets_file.stat().st_mode & 0o777) == 0o400


def test_stdin_lines_skip_empty_ones_and_end_only_at_end_of_file() -> None:
    """The attach channel's reader: an empty line is skipped (it once ended the channel, and the order then went
    by exec 3 s later); a last line without its newline still counts; only the end of file ends the channel."""
    read_end, write_end = os.pipe()
    os.write(write_end, b'\n{"a": 1}\n\n{"b": 2}')
    os.close(write_end)
    channel: follower.Lines | None = follower.Lines(read_end, 100)
    seen: list[bytes] = []
    try:
        for _ in range(20):
            channel, line = follower.poll_line(channel, 0.01)
            if line is not None:
                seen.append(line)
            if channel is None:
                break
    finally:
        os.close(read_end)
    assert seen == [b'{"a": 1}', b'{"b": 2}'] and channel is None


def test_the_promoted_copy_is_checked_on_the_bytes_that_will_serve(tmp_path: Path) -> None:
    """At promotion the copy gets `quick_check` again: what the follower applied after its checked rebuild (the tail
    too) was checked only against each LTX file's own checksum. A copy with broken b-tree pages is refused (the move
    rolls back to the source's intact local file); a sound one passes; a missing one is refused, not created."""
    import sqlite3

    env = ContainerEnv(**{**ContainerEnv.read(GOOD), "follow": True}).to_env()
    identity = AgentIdentity.from_env(
        {**env, contract.DATA_DIR: str(tmp_path / "data"), contract.RUN_DIR: str(tmp_path / "run")}
    )
    with pytest.raises(contract.StartRefused, match="followed copy is missing"):
        follower._check(identity)
    identity.db_path.parent.mkdir(parents=True)
    connection = sqlite3.connect(identity.db_path)
    connection.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    connection.execute("CREATE INDEX tb ON t (b)")
    connection.executemany("INSERT INTO t (b) VALUES (?)", [(f"v{i:06d}" * 10,) for i in range(5000)])
    connection.commit()
    connection.close()
    follower._check(identity)
    with identity.db_path.open("r+b") as file:
        for page in (10, 11, 12):  # cell offsets pointing outside their pages
            file.seek(4096 * (page - 1) + 8)
            file.write(b"\x00\x00\xff\xff")
    # SQLite reports these pages either as quick_check rows or as an error raised while checking: both refuse
    with pytest.raises(contract.StartRefused, match=r"^followed copy fails quick_check") as refused:
        follower._check(identity)
    assert refused.value.code == "restore_failed"


def test_a_restore_that_refused_a_corrupt_copy_ends_the_follower_with_its_own_code(tmp_path: Path) -> None:
    """Litestream's `restore -f -integrity-check` exits 1 when the rebuilt copy fails its check, as on any error:
    the follower reads its output on the way to stderr and exits replica_corrupt (8), not restore_failed (5), so
    the control plane fails the move before anything stops instead of moving cold onto the same replica."""
    env = ContainerEnv(**{**ContainerEnv.read(GOOD), "follow": True}).to_env()
    identity = AgentIdentity.from_env(
        {**env, contract.DATA_DIR: str(tmp_path / "data"), contract.RUN_DIR: str(tmp_path / "run")}
    )
    said = "Error: post-restore integrity check: integrity check failed: *** in database main ***"
    for output, code in ((said, contract.EXIT_REPLICA_CORRUPT), ("Error: no snapshots", contract.EXIT_RESTORE_FAILED)):
        restore = subprocess.Popen(  # plays `restore -f` refusing the copy
            [sys.executable, "-c", f"import sys; print({output!r}); sys.exit(1)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        with pytest.raises(contract.StartRefused) as refused:
            follower._wait_for_order(
                restore, follower._Tee(restore), tmp_path / "run" / "order.json", 0.01, None, identity, print
            )
        assert refused.value.exit_code == code, output
