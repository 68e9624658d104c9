"""The embedded SeaweedFS store, scoped tenant credentials and CURRENT markers, against the real store."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from control_plane import pki
from control_plane.storage import CurrentMoved, ObjectStorage, SeaweedCredentials, TenantCredentials
from control_plane.storage.seaweed import EmbeddedStore
from tests.integration.conftest import BUCKET, start_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    embedded = start_store(tmp_path_factory.mktemp("store"), "127.0.0.1")
    yield embedded
    embedded.down()
    assert embedded.running_pid() is None


@pytest.fixture(scope="module")
def admin(store: EmbeddedStore) -> ObjectStorage:
    return ObjectStorage(store.address.endpoint, *store.admin, BUCKET)


@pytest.fixture(scope="module")
def credentials(store: EmbeddedStore, admin: ObjectStorage) -> SeaweedCredentials:
    return SeaweedCredentials(store, admin)


def _as(store: EmbeddedStore, creds: TenantCredentials) -> Any:
    return ObjectStorage(store.address.endpoint, creds.access_key, creds.secret_key, BUCKET).s3


def _denied(call: Callable[[], object]) -> bool:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"] in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId")
    return False


def test_up_is_idempotent(store: EmbeddedStore) -> None:
    pid = store.running_pid()
    store.up()
    assert store.running_pid() == pid


def test_tenant_credentials_cannot_touch_another_tenant(
    store: EmbeddedStore, admin: ObjectStorage, credentials: SeaweedCredentials
) -> None:
    a, b = credentials.issue("acme"), credentials.issue("globex")
    assert "secret_key" not in repr(a)
    s3a = _as(store, a)
    own = admin.tenant_prefix("acme") + "agents/0/gen-1/x"
    other = admin.tenant_prefix("globex") + "agents/0/gen-1/x"
    admin.s3.put_object(Bucket=BUCKET, Key=other, Body=b"globex data")

    s3a.put_object(Bucket=BUCKET, Key=own, Body=b"acme data")
    assert s3a.get_object(Bucket=BUCKET, Key=own)["Body"].read() == b"acme data"
    assert [o["Key"] for o in s3a.list_objects_v2(Bucket=BUCKET, Prefix=admin.tenant_prefix("acme"))["Contents"]] == [
        own
    ]

    assert _denied(lambda: s3a.get_object(Bucket=BUCKET, Key=other))
    assert _denied(lambda: s3a.head_object(Bucket=BUCKET, Key=other))
    assert _denied(lambda: s3a.put_object(Bucket=BUCKET, Key=other, Body=b"overwrite"))
    assert _denied(lambda: s3a.delete_object(Bucket=BUCKET, Key=other))
    assert _denied(lambda: s3a.list_objects_v2(Bucket=BUCKET, Prefix=admin.tenant_prefix("globex")))
    assert _denied(
        lambda: s3a.copy_object(Bucket=BUCKET, Key=own + "-copy", CopySource={"Bucket": BUCKET, "Key": other})
    )
    assert admin.s3.get_object(Bucket=BUCKET, Key=other)["Body"].read() == b"globex data"
    assert _denied(lambda: _as(store, b).get_object(Bucket=BUCKET, Key=own))


def test_revoked_credentials_stop_working(
    store: EmbeddedStore, admin: ObjectStorage, credentials: SeaweedCredentials
) -> None:
    creds = credentials.issue("initech")
    key = admin.tenant_prefix("initech") + "agents/0/CURRENT"
    _as(store, creds).put_object(Bucket=BUCKET, Key=key, Body=b"1")
    credentials.revoke("initech")
    credentials.revoke("initech")  # twice is harmless
    assert _denied(lambda: _as(store, creds).get_object(Bucket=BUCKET, Key=key))


def test_incarnation_credentials_write_only_their_own_generation(
    store: EmbeddedStore, admin: ObjectStorage, credentials: SeaweedCredentials
) -> None:
    admin.advance_current("cyberdyne", 0, 2, None)
    admin.s3.put_object(Bucket=BUCKET, Key=admin.replica_prefix("cyberdyne", 0, 1) + "0000/1.ltx", Body=b"old")
    admin.s3.put_object(Bucket=BUCKET, Key=admin.agent_prefix("cyberdyne", 1) + "CURRENT", Body=b"1")
    s3 = _as(store, credentials.issue_incarnation("cyberdyne", 0, 2))
    own = admin.replica_prefix("cyberdyne", 0, 2)
    current = admin.agent_prefix("cyberdyne", 0) + "CURRENT"
    older_key = admin.replica_prefix("cyberdyne", 0, 1) + "0000/1.ltx"

    s3.put_object(Bucket=BUCKET, Key=own + "0000/1.ltx", Body=b"new")  # its own replica
    assert s3.get_object(Bucket=BUCKET, Key=admin.agent_prefix("cyberdyne", 0) + "CURRENT")["Body"].read() == b"2"
    assert s3.get_object(Bucket=BUCKET, Key=admin.replica_prefix("cyberdyne", 0, 1) + "0000/1.ltx")  # restore-from
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=admin.agent_prefix("cyberdyne", 0))
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted([current, older_key, own + "0000/1.ltx"])

    assert _denied(lambda: s3.put_object(Bucket=BUCKET, Key=current, Body=b"3"))  # cannot move its own fence
    assert _denied(lambda: s3.delete_object(Bucket=BUCKET, Key=current))
    newer = admin.replica_prefix("cyberdyne", 0, 3) + "0000/1.ltx"
    assert _denied(lambda: s3.put_object(Bucket=BUCKET, Key=newer, Body=b"zombie"))  # nor a newer generation
    older = admin.replica_prefix("cyberdyne", 0, 1) + "0000/1.ltx"
    assert _denied(lambda: s3.put_object(Bucket=BUCKET, Key=older, Body=b"zombie"))  # nor the one it restores
    other_agent = admin.agent_prefix("cyberdyne", 1) + "CURRENT"
    assert _denied(lambda: s3.get_object(Bucket=BUCKET, Key=other_agent))  # nor another agent of its tenant
    assert _denied(lambda: s3.put_object(Bucket=BUCKET, Key=own[:-1] + "0/x", Body=b"gen-20"))  # gen-2 != gen-20

    credentials.revoke_incarnation("cyberdyne", 0, 2)
    assert _denied(lambda: s3.get_object(Bucket=BUCKET, Key=current))


def test_current_marker_conditional_writes(admin: ObjectStorage) -> None:
    assert admin.read_current("hooli", 0) is None
    first = admin.advance_current("hooli", 0, 1, expected=None)
    with pytest.raises(CurrentMoved):
        admin.advance_current("hooli", 0, 1, expected=None)  # a racing creator loses
    second = admin.advance_current("hooli", 0, 2, expected=first)
    with pytest.raises(CurrentMoved):
        admin.advance_current("hooli", 0, 3, expected=first)  # stale etag: someone moved it since
    current = admin.read_current("hooli", 0)
    assert current == second and current is not None and current.generation == 2


def test_generations_and_purge(admin: ObjectStorage) -> None:
    for g in (1, 2, 5):
        admin.s3.put_object(Bucket=BUCKET, Key=admin.replica_prefix("umbrella", 3, g) + "0000.ltx", Body=b"x")
    assert admin.generations("umbrella", 3) == [1, 2, 5]
    assert admin.replica_url("umbrella", 3, 2) == f"s3://{BUCKET}/fleet/tenants/umbrella/agents/3/gen-2/"
    assert admin.purge_tenant("umbrella") == 3
    assert admin.purge_tenant("umbrella") == 0
    assert admin.generations("umbrella", 3) == []


@pytest.fixture(scope="module")
def bridged_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    """A store on an address that is not 127.0.0.1, as containers see it on a bridge (127.0.0.2 stands in)."""
    embedded = start_store(tmp_path_factory.mktemp("bridged"), "127.0.0.2")
    yield embedded
    embedded.down()
    assert embedded.running_pid() is None


def _connects(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((ip, port)) == 0


def test_only_s3_is_reachable_on_the_store_address(bridged_store: EmbeddedStore) -> None:
    a = bridged_store.address
    assert _connects(a.ip, a.s3_port)
    for port in (a.master_port, a.volume_port, a.filer_port):  # and their gRPC twins: loopback only
        assert not _connects(a.ip, port), f"port {port} answers on {a.ip}"
        assert not _connects(a.ip, port + 10000), f"port {port + 10000} answers on {a.ip}"
        assert _connects("127.0.0.1", port)


def test_the_s3_grpc_port_refuses_a_client_without_the_stores_certificate(
    bridged_store: EmbeddedStore, tmp_path: Path
) -> None:
    """Its `Configure` call replaces every S3 identity: only the store's own certificate may talk to it."""
    a = bridged_store.address
    context = ssl.create_default_context(cafile=str(bridged_store.directory / "pki" / "ca.pem"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the refusal arrives during the handshake
    with pytest.raises(ssl.SSLError), socket.create_connection((a.ip, a.s3_port + 10000), timeout=5) as raw:
        context.wrap_socket(raw, server_hostname=a.ip).close()
    other = pki.client_cert(pki.init_ca(tmp_path / "other-ca"), "intruder")  # a certificate from another CA
    context.load_cert_chain(other.cert, other.key)
    with pytest.raises(ssl.SSLError), socket.create_connection((a.ip, a.s3_port + 10000), timeout=5) as raw:
        context.wrap_socket(raw, server_hostname=a.ip).close()
    own = pki.client_cert(pki.init_ca(bridged_store.directory / "pki"), "seaweed")
    context.load_cert_chain(own.cert, own.key)
    with socket.create_connection((a.ip, a.s3_port + 10000), timeout=5) as raw:
        context.wrap_socket(raw, server_hostname=a.ip).close()


def test_the_stores_state_is_private_and_weed_keeps_its_sockets_inside(bridged_store: EmbeddedStore) -> None:
    directory = bridged_store.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for secret in ("s3.json", "security.toml"):
        assert stat.S_IMODE((directory / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((directory / "pki" / "ca.key").stat().st_mode) == 0o600
    assert list((directory / "tmp").glob("*.sock")), "weed's unix sockets belong in the store's own TMPDIR"


def test_identities_are_managed_through_the_mutual_tls_shell(bridged_store: EmbeddedStore, tmp_path: Path) -> None:
    admin = ObjectStorage(bridged_store.address.endpoint, *bridged_store.admin, BUCKET)
    admin.ensure_bucket()
    creds = SeaweedCredentials(bridged_store, admin).issue("initech")
    key = admin.tenant_prefix("initech") + "agents/0/gen-1/x"
    _as(bridged_store, creds).put_object(Bucket=BUCKET, Key=key, Body=b"ok")
    assert admin.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"ok"


def test_a_store_given_a_relative_directory_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`litefleet up` keeps the store in `var/store` (relative): weed runs with the store as its working directory,
    so every path it is given must be absolute (the demo failed on this once)."""
    monkeypatch.chdir(tmp_path)
    store = start_store(Path("var/store"), "127.0.0.1")
    try:
        assert store.directory.is_absolute() and store.running_pid() is not None
    finally:
        store.down()


def test_one_shell_session_mints_keys_and_a_lost_session_or_a_restarted_store_gets_a_new_one(tmp_path: Path) -> None:
    """Keys are minted in one long-lived `weed shell` (a session costs ~0.2 s to start, a key then ~2 ms): the same
    process serves the next key; a session killed under it is replaced at the next command; keys minted after the
    store restarted work; each key works at once."""
    store = start_store(tmp_path / "store", "127.0.0.1")
    try:
        admin = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
        credentials = SeaweedCredentials(store, admin)

        def works(tenant: str) -> int:
            creds = credentials.issue(tenant)
            key = admin.tenant_prefix(tenant) + "agents/0/gen-1/x"
            _as(store, creds).put_object(Bucket=BUCKET, Key=key, Body=b"ok")
            session = store._session
            assert session is not None and session._process is not None
            return session._process.pid

        first = works("acme")
        assert works("initech") == first  # the same session
        assert works("terror") == first  # a name holding "error" in the listing is no failure
        credentials.revoke("terror")
        with ThreadPoolExecutor(max_workers=6) as pool:  # keys minted at once, one after another in the session
            assert set(pool.map(works, [f"t{i}" for i in range(6)])) == {first}
        os.kill(first, signal.SIGKILL)
        after_kill = works("globex")
        assert after_kill != first
        restarter = EmbeddedStore(store.directory, store.address, BUCKET, *store.admin)  # another process's view
        restarter.down()
        restarter.up()
        works("hooli")  # a key minted after the store restarted works (the session reconnected, or was replaced)
    finally:
        store.down()
    assert store._session is not None and store._session._process is None  # down() ends the session
