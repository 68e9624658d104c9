"""The container's identity: what the entrypoint accepts, and the one-line refusals for what it does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent_image.container import litestream
from agent_image.container.identity import AgentIdentity
from agent_image.contract import AgentSecrets, ContainerEnv

PREFIX = "s3://litefleet/fleet/tenants/acme/agents/2"
GOOD = {
    "LITEFLEET_TENANT": "acme",
    "LITEFLEET_AGENT": "2",
    "LITEFLEET_GENERATION": "5",
    "LITEFLEET_BUNDLE": "tenants.hello",
    "LITEFLEET_REPLICA_URL": f"{PREFIX}/gen-5",
    "LITEFLEET_RESTORE_FROM_URL": f"{PREFIX}/gen-4",
    "LITEFLEET_S3_ENDPOINT": "http://172.17.0.1:8333",
}
SECRETS = AgentSecrets("agent-token-0123456789", "admin-token-0123456789", "LFKEY", "very-secret")


def test_a_complete_environment_names_every_path() -> None:
    identity = AgentIdentity.from_env(GOOD).with_secrets(SECRETS)
    assert (identity.tenant, identity.agent, identity.generation) == ("acme", 2, 5)
    assert identity.bucket == "litefleet"
    assert identity.current_key == "fleet/tenants/acme/agents/2/CURRENT"
    assert identity.shutdown_key == "fleet/tenants/acme/agents/2/gen-5/shutdown.json"
    assert identity.credentials == ("LFKEY", "very-secret")
    assert "very-secret" not in repr(identity) and "token" not in repr(identity.secrets)
    assert identity.effective_lease_timeout == 15.0 and identity.durability == "local"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"LITEFLEET_TENANT": ""}, "LITEFLEET_TENANT is not set"),
        ({"LITEFLEET_TENANT": "Acme_Corp"}, "not a valid name"),
        ({"LITEFLEET_AGENT": "-1"}, "LITEFLEET_AGENT must be a whole number"),
        ({"LITEFLEET_GENERATION": "0"}, "LITEFLEET_GENERATION must be a whole number >= 1"),
        ({"LITEFLEET_REPLICA_URL": f"{PREFIX}/gen-4"}, "must end with tenants/acme/agents/2/gen-5"),
        ({"LITEFLEET_REPLICA_URL": "http://elsewhere/x"}, "not an s3:// URL"),
        ({"LITEFLEET_RESTORE_FROM_URL": f"{PREFIX}/gen-5"}, "older generation of this same agent"),
        ({"LITEFLEET_RESTORE_FROM_URL": "s3://litefleet/fleet/tenants/other/agents/2/gen-1"}, "same agent"),
        ({"LITEFLEET_SYNC_INTERVAL": "soon"}, "is not a number"),
        ({"LITEFLEET_RESTORE_INTEGRITY": "maybe"}, "LITEFLEET_RESTORE_INTEGRITY must be one of"),
        ({"LITEFLEET_DURABILITY": "eventually"}, "LITEFLEET_DURABILITY must be one of local, replicated"),
        ({"LITEFLEET_LEASE_TIMEOUT": "0"}, "LITEFLEET_LEASE_TIMEOUT must be at least"),
        ({"LITEFLEET_LEASE_TIMEOUT": "5"}, "must be longer than LITEFLEET_FENCE_INTERVAL"),
        ({"AWS_SECRET_ACCESS_KEY": "very-secret"}, "AWS_SECRET_ACCESS_KEY must not be in the environment"),
        ({"LITEFLEET_AGENT_TOKEN": "x"}, "LITEFLEET_AGENT_TOKEN must not be in the environment"),
    ],
)
def test_bad_identities_are_refused_with_a_reason(change: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgentIdentity.from_env({**GOOD, **change})


def test_entrypoint_refuses_a_bad_identity_in_one_line_without_secrets() -> None:
    env = {**GOOD, "LITEFLEET_TENANT": "Bad Name", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "agent_image.container.entrypoint"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "litefleet-agent: bad_identity: tenant 'Bad Name' is not a valid name (a-z, 0-9, '-', up to 63)"
    ]
    assert "very-secret" not in done.stderr + done.stdout


def test_generated_litestream_config_is_read_back_by_litestream(tmp_path: Path) -> None:
    env = {**GOOD, "LITEFLEET_DATA_DIR": str(tmp_path), "LITEFLEET_SYNC_INTERVAL": "0.1"}
    identity = AgentIdentity.from_env(env).with_secrets(SECRETS)
    document = litestream.agent_config(identity, identity.replica_url)
    assert document["dbs"][0]["replica"]["sync-interval"] == "100ms"
    assert document["socket"]["path"] == str(identity.socket_path)
    # the S3 keys reach Litestream through its config file (0600), never through an environment
    assert document["dbs"][0]["replica"]["access-key-id"] == "LFKEY"
    assert document["dbs"][0]["replica"]["secret-access-key"] == "very-secret"
    litestream.write_config(document, tmp_path / "litestream.json")
    assert (tmp_path / "litestream.json").stat().st_mode & 0o777 == 0o600
    litestream.write_config(document, tmp_path / "litestream.json")  # rewriting (a restart) works too


def test_a_config_litestream_reads_differently_is_rejected(tmp_path: Path) -> None:
    """Litestream ignores keys it does not know: a misspelt `replica` would run with no replication at all."""
    document = litestream.config(tmp_path / "a.db", "s3://b/x", "http://127.0.0.1:1")
    document["dbs"][0]["replcia"] = document["dbs"][0].pop("replica")
    with pytest.raises(litestream.LitestreamError, match="replica"):
        litestream.write_config(document, tmp_path / "litestream.json")


def test_the_environment_the_control_plane_writes_is_the_one_the_agent_reads() -> None:
    """The contract is written once (agent_image.contract): what `to_env` writes, `from_env` reads back."""
    written = ContainerEnv(**ContainerEnv.read(GOOD)).to_env()
    assert written == {**GOOD, "LITEFLEET_S3_REGION": "us-east-1"} | {
        "LITEFLEET_SYNC_INTERVAL": "1.0",
        "LITEFLEET_MONITOR_INTERVAL": "1.0",
        "LITEFLEET_FENCE_INTERVAL": "5.0",
        "LITEFLEET_DURABILITY": "local",
        "LITEFLEET_DURABILITY_TIMEOUT": "10.0",
    }
    with_lease = ContainerEnv(**{**ContainerEnv.read(GOOD), "lease_timeout": 7.5, "durability": "replicated"})
    assert ContainerEnv.read(with_lease.to_env())["lease_timeout"] == 7.5
    assert not any("SECRET" in name or "TOKEN" in name or "KEY" in name for name in with_lease.to_env())
    read = AgentIdentity.from_env(written)
    assert ContainerEnv(**ContainerEnv.read(written)) == ContainerEnv(
        **{name: getattr(read, name) for name in ContainerEnv.read(written)}
    )
