"""Secrets as a file, not env (issue 10): the schema, the `secrets_in` writer the control plane runs through
`docker exec`, and the entrypoint's bounded wait for the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_image import contract
from agent_image.container.identity import AgentIdentity
from agent_image.contract import AgentSecrets, IdentityError
from tests.unit.agent_image.agent_process import REPO
from tests.unit.agent_image.test_identity import GOOD, SECRETS


def secrets_in(stdin: bytes, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "agent_image.container.secrets_in"],
        input=stdin,
        capture_output=True,
        timeout=30,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO), contract.SECRETS_FILE: str(path)},
    )


def test_the_schema_round_trips_and_hides_its_values() -> None:
    assert AgentSecrets.parse(SECRETS.to_json()) == SECRETS
    assert json.loads(SECRETS.to_json()) == {
        "version": 1,
        "agent_token": "agent-token-0123456789",
        "admin_token": "admin-token-0123456789",
        "access_key": "LFKEY",
        "secret_key": "very-secret",
    }
    assert "token-0123" not in repr(SECRETS) and "very-secret" not in repr(SECRETS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"agent_token": "short"}, "agent_token must be at least 16"),
        ({"admin_token": "has a space in it here"}, "admin_token must be at least 16 printable"),
        ({"admin_token": "agent-token-0123456789"}, "must differ"),
        ({"secret_key": ""}, "access_key and secret_key are required"),
        ({"access_key": 5}, "access_key must be a string"),
        ({"version": 2}, "version 1"),
        ({"password": "x"}, "unknown fields: password"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field_not_the_value(change: dict[str, object], message: str) -> None:
    document = {**json.loads(SECRETS.to_json()), **change}
    with pytest.raises(IdentityError, match=message) as caught:
        AgentSecrets.parse(json.dumps(document))
    assert "very-secret" not in str(caught.value) and "0123456789" not in str(caught.value)


def test_a_standalone_agent_needs_only_the_tokens() -> None:
    only_tokens = json.dumps({"agent_token": "a" * 16, "admin_token": "b" * 16})
    assert AgentSecrets.parse(only_tokens, need_s3=False).access_key == ""
    with pytest.raises(IdentityError, match="required"):
        AgentSecrets.parse(only_tokens)


def test_secrets_in_writes_the_file_atomically_0400_and_again_harmlessly(tmp_path: Path) -> None:
    path = tmp_path / "run" / "secrets" / "identity.json"
    for _ in range(2):  # a re-delivery (the control plane retried its exec) replaces it with the same bytes
        done = secrets_in(SECRETS.to_json().encode(), path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"" and done.stderr == b""
    assert path.stat().st_mode & 0o777 == 0o400
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert AgentSecrets.read(path) == SECRETS
    assert [p.name for p in path.parent.iterdir()] == ["identity.json"]  # no temporary file left


@pytest.mark.parametrize("stdin", [b"", b"not json", b'{"agent_token": "very-secret-but-too-short"}', b"x" * 20000])
def test_secrets_in_refuses_bad_input_in_one_line_without_writing(tmp_path: Path, stdin: bytes) -> None:
    path = tmp_path / "identity.json"
    done = secrets_in(stdin, path)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("secrets_in: invalid: ")
    assert b"very-secret" not in done.stderr
    assert not path.exists()


def test_secrets_in_reports_an_unwritable_place_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = secrets_in(SECRETS.to_json().encode(), blocker / "identity.json")
    assert done.returncode == 3 and done.stderr.decode().startswith("secrets_in: cannot write ")


def test_the_identity_waits_for_its_secrets_then_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    identity = AgentIdentity.from_env({**GOOD, contract.SECRETS_FILE: str(path), contract.SECRETS_TIMEOUT: "5"})
    now = [0.0]

    def sleep(seconds: float) -> None:  # the control plane's exec lands after 1.2 s
        now[0] += seconds
        if now[0] >= 1.2 and not path.exists():
            path.write_text(SECRETS.to_json())

    assert identity.wait_for_secrets(clock=lambda: now[0], sleep=sleep).credentials == ("LFKEY", "very-secret")
    assert 1.2 <= now[0] < 1.5


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    identity = AgentIdentity.from_env({**GOOD, contract.SECRETS_FILE: str(tmp_path / "never.json")})
    now = [0.0]
    with pytest.raises(IdentityError, match=r"no secrets at .* after 60s"):
        identity.wait_for_secrets(clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))


def test_entrypoint_without_secrets_exits_6_in_one_line(tmp_path: Path) -> None:
    env = {
        **GOOD,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        contract.SECRETS_FILE: str(tmp_path / "identity.json"),
        contract.SECRETS_TIMEOUT: "0.3",
        contract.DATA_DIR: str(tmp_path / "data"),
        contract.RUN_DIR: str(tmp_path / "run"),
    }
    done = run_entrypoint(env)
    assert done.returncode == contract.EXIT_NO_SECRETS == 6
    refusals = [line for line in done.stderr.splitlines() if line.startswith("litefleet-agent:")]
    assert "agent.waiting_for_secrets" in done.stderr  # the structured log says what it waits for
    assert refusals == [
        f"litefleet-agent: no_secrets: no secrets at {tmp_path / 'identity.json'} after 0.3s (the control plane "
        "delivers them with `docker exec ... python -m agent_image.container.secrets_in`)"
    ]


def test_secrets_in_needs_no_eof_one_line_is_enough(tmp_path: Path) -> None:
    """Over a TLS engine connection the control plane cannot half-close the exec's stdin: a line ends the input."""
    path = tmp_path / "identity.json"
    writer = subprocess.Popen(
        [sys.executable, "-m", "agent_image.container.secrets_in", str(path)],
        stdin=subprocess.PIPE,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert writer.stdin is not None
    try:
        writer.stdin.write(SECRETS.to_json().encode() + b"\n")
        writer.stdin.flush()  # ... and stdin stays open
        assert writer.wait(30) == 0
    finally:
        writer.kill()
        writer.stdin.close()
    assert AgentSecrets.read(path) == SECRETS


def test_entrypoint_without_a_usable_run_dir_exits_2_in_one_line(tmp_path: Path) -> None:
    """No tmpfs at /run/litefleet under a read-only root: say so before waiting for secrets that cannot land."""
    (tmp_path / "file").write_text("")
    env = {**GOOD, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), contract.RUN_DIR: str(tmp_path / "file" / "run")}
    done = run_entrypoint(env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"litefleet-agent: bad_identity: LITEFLEET_RUN_DIR={tmp_path / 'file' / 'run'} is unusable (Not a directory): "
        "mount a tmpfs there owned by the agent (see agent_image/SECURITY-NOTES.md)"
    ]


def run_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The container's entrypoint as a subprocess of this test, with `env` as its whole environment."""
    command = [sys.executable, "-m", "agent_image.container.entrypoint"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
