"""The warm pool's agent side (agent_image/container/pool.py): a pooled container waits for a claim, the claim writer
checks it as the entrypoint checks an identity, writes the secrets then the record, and refuses another identity.
The whole path against real Docker, SeaweedFS and Litestream is tests/integration/test_pool.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent_image import contract
from agent_image.container import pool
from agent_image.container.identity import AgentIdentity
from agent_image.contract import AgentSecrets, IdentityError
from tests.unit.agent_image.test_identity import GOOD, SECRETS

NEW = {k: v for k, v in GOOD.items() if k != contract.RESTORE_FROM_URL}


def image_env(tmp_path: Path) -> dict[str, str]:
    return {
        contract.POOLED: "1",
        contract.DATA_DIR: str(tmp_path / "data"),
        contract.RUN_DIR: str(tmp_path / "run"),
        contract.SECRETS_FILE: str(tmp_path / "run" / "secrets" / "identity.json"),
    }


def claim_line(env: dict[str, str] = NEW, secrets: AgentSecrets = SECRETS) -> str:
    return pool.Claim(dict(env), secrets).to_json()


def run_claim(tmp_path: Path, line: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_image.container.pool", "claim"],
        input=line + "\n",
        capture_output=True,
        text=True,
        env={**os.environ, **(image_env(tmp_path) if env is None else env)},
        timeout=60,
        check=False,
    )


def test_a_claim_round_trips_and_makes_the_same_identity_as_the_environment() -> None:
    claim = pool.Claim.parse(claim_line(), {contract.POOLED: "1"})
    assert claim.secrets == SECRETS and claim.env == NEW
    identity = AgentIdentity.from_env(pool.identity_env({contract.POOLED: "1"}, claim.env))
    assert identity == AgentIdentity.from_env(NEW)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ('{"version": 2, "env": {}, "secrets": {}}', "version 1"),
        ('{"env": {}, "secrets": {}, "extra": 1}', "version 1"),
        ('{"env": [], "secrets": {}}', "env must be an object"),
        (claim_line({**NEW, contract.RESTORE_FROM_URL: GOOD[contract.RESTORE_FROM_URL]}), "may not set"),
        (claim_line({**NEW, contract.FOLLOW: "1"}), "may not set"),
        (claim_line({**NEW, contract.DATA_DIR: "/etc"}), "may not set"),
        (claim_line({**NEW, contract.TENANT: "Not A Name"}), "not a valid name"),
        (claim_line({**NEW, contract.REPLICA_URL: "s3://litefleet/fleet/tenants/other/agents/2/gen-5"}), "must end"),
        (claim_line({k: v for k, v in NEW.items() if k != contract.BUNDLE}), "LITEFLEET_BUNDLE is not set"),
        (json.dumps({"env": NEW, "secrets": {"agent_token": "short"}}), "agent_token"),
    ],
)
def test_a_bad_claim_is_refused_naming_the_field(line: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message) as refused:
        pool.Claim.parse(line, {contract.POOLED: "1"})
    assert "very-secret" not in str(refused.value)


def test_the_writer_puts_secrets_on_the_tmpfs_and_only_the_identity_on_the_volume(tmp_path: Path) -> None:
    done = run_claim(tmp_path, claim_line())
    assert done.returncode == 0, done.stderr
    secrets_file = tmp_path / "run" / "secrets" / "identity.json"
    assert AgentSecrets.read(secrets_file) == SECRETS
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o400
    record = (tmp_path / "data" / pool.CLAIM_FILE).read_text()
    assert json.loads(record) == NEW and "very-secret" not in record and "token" not in record
    again = run_claim(tmp_path, claim_line())  # a retried claim (lost answer) is harmless
    assert again.returncode == 0, again.stderr
    other = run_claim(tmp_path, claim_line({**NEW, contract.TENANT: "other", contract.REPLICA_URL: _url("other")}))
    assert (other.returncode, other.stderr.strip()) == (
        4,
        "pool: already_claimed: this container holds another incarnation",
    )
    assert json.loads((tmp_path / "data" / pool.CLAIM_FILE).read_text()) == NEW


def test_the_writer_refuses_a_bad_claim_and_a_container_that_is_not_pooled(tmp_path: Path) -> None:
    bad = run_claim(tmp_path, claim_line({**NEW, contract.FOLLOW: "1"}))
    assert bad.returncode == 2 and "may not set: LITEFLEET_FOLLOW" in bad.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
    unpooled = run_claim(tmp_path, claim_line(), {**image_env(tmp_path), contract.POOLED: "0"})
    assert unpooled.returncode == 2 and "not a pooled one" in unpooled.stderr


def test_the_entrypoint_side_waits_for_the_record_and_gets_the_claimed_environment(tmp_path: Path) -> None:
    env = image_env(tmp_path)
    got: list[dict[str, str]] = []
    waiting = threading.Event()
    thread = threading.Thread(target=lambda: got.append(pool.wait_for_claim(env, ready=waiting.set)))
    thread.start()
    assert waiting.wait(10)
    time.sleep(0.05)
    assert not got  # nothing claimed yet: it idles
    (tmp_path / "data").mkdir()
    pool.write_claim(pool.Claim(dict(NEW), SECRETS), env)
    thread.join(10)
    assert got and contract.POOLED not in got[0]
    identity = AgentIdentity.from_env(got[0]).with_secrets()
    assert (identity.tenant, identity.agent, identity.generation, identity.restore_from_url) == ("acme", 2, 5, None)
    assert identity.secrets == SECRETS and identity.data_dir == tmp_path / "data"
    # a restart of the claimed container: the record is there at once, the secrets come again by `secrets_in`
    assert pool.wait_for_claim(env, sleep=_never) == got[0]


def test_a_damaged_record_stops_the_entrypoint_with_bad_identity(tmp_path: Path) -> None:
    env = image_env(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / pool.CLAIM_FILE).write_text(json.dumps({**NEW, contract.TENANT: "BAD"}))
    with pytest.raises(IdentityError, match="not a valid name"):
        pool.wait_for_claim(env, sleep=_never)


def test_the_claim_writer_does_not_import_the_runtime() -> None:
    from tests.unit.agent_image.test_start import imported_by

    assert not {"agent_image._runtime", "structlog", "asyncio"} & imported_by("import agent_image.container.pool")


def _url(tenant: str) -> str:
    return f"s3://litefleet/fleet/tenants/{tenant}/agents/2/gen-5"


def _never(seconds: float) -> None:
    raise AssertionError("should not wait")


def test_a_claim_on_stdin_is_answered_and_a_bad_one_leaves_the_container_waiting(tmp_path: Path) -> None:
    env = image_env(tmp_path)
    read, write = os.pipe()
    answers: list[dict[str, object]] = []
    got: list[dict[str, str]] = []
    waiting = threading.Event()

    def wait() -> None:
        claimed = pool.wait_for_claim(
            env, ready=waiting.set, stdin=read, answer=lambda line: answers.append(json.loads(line))
        )
        got.append(claimed)

    thread = threading.Thread(target=wait)
    thread.start()
    assert waiting.wait(10)
    os.write(write, claim_line({**NEW, contract.RESTORE_FROM_URL: _url("acme")}).encode() + b"\n")
    os.write(write, b"not json\n")
    deadline = time.monotonic() + 10
    while len(answers) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [a["claim"] for a in answers] == [2, 2] and not got  # refused, still waiting
    assert "RESTORE_FROM_URL" in str(answers[0]["error"]) and "acme" not in str(answers[0]["error"])
    assert not (tmp_path / "data" / pool.CLAIM_FILE).exists()
    os.write(write, claim_line()[:100].encode())  # a line in two writes
    os.write(write, claim_line()[100:].encode() + b"\n")
    thread.join(10)
    os.close(write)
    os.close(read)
    assert answers[-1] == {"claim": 0, "error": ""} and got and contract.POOLED not in got[0]
    identity = AgentIdentity.from_env(got[0]).with_secrets()
    assert identity.secrets == SECRETS and (identity.tenant, identity.generation) == ("acme", 5)
    record = (tmp_path / "data" / pool.CLAIM_FILE).read_text()
    assert SECRETS.agent_token not in record and SECRETS.secret_key not in record
    assert stat.S_IMODE(os.stat(env[contract.SECRETS_FILE]).st_mode) == 0o400
    # the same identity again by the exec writer (a re-delivery) is harmless; another one is refused
    assert run_claim(tmp_path, claim_line()).returncode == 0
    other = {**NEW, contract.TENANT: "other", contract.REPLICA_URL: _url("other")}
    assert run_claim(tmp_path, claim_line(other)).returncode == 4


def test_without_an_attach_channel_the_record_alone_is_watched(tmp_path: Path) -> None:
    env = image_env(tmp_path)
    read, write = os.pipe()
    os.close(write)  # stdin at end of file (a container created without open stdin reads /dev/null)
    got: list[dict[str, str]] = []
    thread = threading.Thread(target=lambda: got.append(pool.wait_for_claim(env, stdin=read)))
    thread.start()
    time.sleep(0.05)
    assert not got
    (tmp_path / "data").mkdir()
    pool.write_claim(pool.Claim(dict(NEW), SECRETS), env)
    thread.join(10)
    os.close(read)
    assert got and got[0][contract.TENANT] == "acme"


def test_the_pooled_process_preloads_the_server_but_no_bundle() -> None:
    from tests.unit.agent_image.test_start import imported_by

    statement = "from agent_image.logs import configure_logging; configure_logging()"
    loaded = imported_by(f"{statement}; from agent_image.container import warm; warm.preload()")
    assert {"agent_image.server._app", "uvicorn", "starlette.applications", "agent_image._runtime"} <= loaded
    assert not {name for name in loaded if name.startswith("tenants")}
