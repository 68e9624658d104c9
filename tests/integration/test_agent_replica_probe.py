"""The agent's own "is there a replica?" LIST (issue 14: a new agent skips a `litestream restore` that would find
nothing), against the real store and the real Litestream, with an incarnation's scoped key."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from agent_image.container import litestream
from agent_image.container.s3 import S3Client, S3Error
from control_plane.storage import ObjectStorage, SeaweedCredentials
from control_plane.storage.seaweed import EmbeddedStore
from tests.integration.conftest import BUCKET, start_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    embedded = start_store(tmp_path_factory.mktemp("store"), "127.0.0.1")
    yield embedded
    embedded.down()


@pytest.fixture(scope="module")
def admin(store: EmbeddedStore) -> ObjectStorage:
    storage = ObjectStorage(store.address.endpoint, *store.admin, BUCKET)
    storage.ensure_bucket()
    return storage


def test_has_keys_sees_only_its_own_prefix_with_a_scoped_key(store: EmbeddedStore, admin: ObjectStorage) -> None:
    admin.advance_current("probe", 0, 2, None)
    creds = SeaweedCredentials(store, admin).issue_incarnation("probe", 0, 2)
    client = S3Client(store.address.endpoint, creds.access_key, creds.secret_key)
    own = admin.replica_prefix("probe", 0, 2)
    assert not client.has_keys(BUCKET, own)
    admin.s3.put_object(Bucket=BUCKET, Key=admin.replica_prefix("probe", 0, 20) + "ltx/0/x.ltx", Body=b"g20")
    assert not client.has_keys(BUCKET, own)  # gen-2/ is not gen-20/
    admin.s3.put_object(Bucket=BUCKET, Key=own + "ltx/0/0000000000000001-0000000000000001.ltx", Body=b"x")
    assert client.has_keys(BUCKET, own)
    stranger = S3Client(store.address.endpoint, "NOSUCHKEY", "nosuchsecret")
    with pytest.raises(S3Error):
        stranger.has_keys(BUCKET, own)


def _config(tmp_path: Path, store: EmbeddedStore, url: str, credentials: tuple[str, str]) -> Path:
    document = litestream.config(tmp_path / "agent.db", url, store.address.endpoint, credentials=credentials)
    return litestream.write_config(document, tmp_path / "restore.json")


def test_restore_of_a_missing_replica_is_answered_by_the_list(
    store: EmbeddedStore, admin: ObjectStorage, tmp_path: Path
) -> None:
    url = admin.replica_url("empty", 0, 1)
    config = _config(tmp_path, store, url, store.admin)
    began = time.monotonic()
    assert litestream.restore(config, tmp_path / "agent.db", if_replica_exists=True) is False
    assert time.monotonic() - began < 0.5
    assert not (tmp_path / "agent.db").exists()
    with pytest.raises(litestream.LitestreamError):  # required: Litestream itself still refuses a missing replica
        litestream.restore(config, tmp_path / "agent.db", if_replica_exists=False)


def test_restore_of_a_real_replica_still_restores_and_checks_it(
    store: EmbeddedStore, admin: ObjectStorage, tmp_path: Path
) -> None:
    source = tmp_path / "source.db"
    connection = apsw.Connection(str(source))
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE t (n INTEGER)")
    with connection:
        connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    url = admin.replica_url("real", 0, 1)
    socket_path = tmp_path / "ls.sock"
    document = litestream.config(source, url, store.address.endpoint, socket_path=socket_path)
    replicate = litestream.write_config(document, tmp_path / "replicate.json")

    process = subprocess.Popen(
        [litestream.binary(), "replicate", "-config", str(replicate)],
        env=litestream.environment(store.admin),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if litestream.sync_wait(socket_path, source, timeout=10).caught_up:
                    break
            except litestream.LitestreamError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(30)
    connection.close()
    target = tmp_path / "out" / "agent.db"
    target.parent.mkdir()
    config = _config(target.parent, store, url, store.admin)
    assert litestream.restore(config, target, if_replica_exists=True, integrity_check="quick") is True
    restored = apsw.Connection(str(target))
    assert restored.execute("SELECT count(*) FROM t").fetchall() == [(100,)]
