"""Durable acknowledgement on request (issue 11) and a visible replication stall. There is no Litestream here:
`litestream sync -wait` is a fake `sync(timeout) -> SyncResult`; the real socket is exercised by the lead's
integration tests (see SECURITY-NOTES.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agent_image import Runtime, Store
from agent_image._errors import ReplicationUnconfirmed
from agent_image.container.identity import AgentIdentity
from agent_image.container.litestream import LitestreamError, SyncResult
from agent_image.container.replication import ReplicationConfirmer, ReplicationMonitor
from agent_image.server import create_app
from tests.unit.agent_image import features_bundle
from tests.unit.agent_image.test_identity import GOOD, SECRETS


class FakeLitestream:
    """Answers `sync -wait` from a script: SyncResults or exceptions, the last one repeated."""

    def __init__(self, *answers: SyncResult | Exception, takes: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.takes = takes

    def sync(self, timeout: float) -> SyncResult:
        self.calls += 1
        if self.takes:
            time.sleep(min(self.takes, timeout))
            if self.takes > timeout:
                raise LitestreamError(f"litestream sync timed out after {timeout:.0f}s")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_caught_up_sync_confirms() -> None:
    fake = FakeLitestream(SyncResult(10, 10))
    ReplicationConfirmer(fake.sync).confirm(5)
    assert fake.calls == 1


def test_writes_outrunning_the_first_sync_need_a_second_that_covers_its_txid() -> None:
    fake = FakeLitestream(SyncResult(10, 9), SyncResult(12, 10))
    ReplicationConfirmer(fake.sync).confirm(5)
    assert fake.calls == 2
    behind = FakeLitestream(SyncResult(10, 8), SyncResult(12, 9))
    with pytest.raises(ReplicationUnconfirmed, match="replica is at txid 9, it needs 10") as caught:
        ReplicationConfirmer(behind.sync).confirm(5)
    assert caught.value.status == 503 and caught.value.code == "replication_unconfirmed"


def test_a_failing_store_is_503_and_a_slow_one_504() -> None:
    failing = FakeLitestream(LitestreamError("litestream sync failed: connection refused"))
    with pytest.raises(ReplicationUnconfirmed, match="connection refused") as caught:
        ReplicationConfirmer(failing.sync).confirm(5)
    assert caught.value.status == 503 and not caught.value.timed_out
    slow = FakeLitestream(SyncResult(1, 1), takes=0.5)
    confirmer = ReplicationConfirmer(slow.sync)
    started = time.monotonic()
    with pytest.raises(ReplicationUnconfirmed) as caught:
        confirmer.confirm(0.2)
    assert time.monotonic() - started < 1.0 and caught.value.status == 504


def test_concurrent_callers_share_syncs() -> None:
    fake = FakeLitestream(SyncResult(5, 5), takes=0.05)
    confirmer = ReplicationConfirmer(fake.sync)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            confirmer.confirm(5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and fake.calls <= 4, fake.calls  # 20 confirmations, a handful of syncs


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(confirm: Callable[[float], None] | None, **kwargs: object) -> TestClient:
        app = create_app(
            lambda: Runtime(str(tmp_path / "agent.db"), features_bundle),
            confirm_replicated=confirm,
            **kwargs,  # type: ignore[arg-type]
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    features_bundle.gate.set()
    for client in clients:
        client.__exit__(None, None, None)


class Recorder:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[float] = []
        self.error = error

    def __call__(self, timeout: float) -> None:
        self.calls.append(timeout)
        if self.error is not None:
            raise self.error


def test_replicated_start_answers_after_the_confirmation(make_client: Callable[..., TestClient]) -> None:
    confirm = Recorder()
    client = make_client(confirm, durability_timeout=7.0)
    local = client.post("/v1/workflows/pipeline", json={"id": "l", "args": [1]})
    assert local.status_code == 201 and confirm.calls == []  # the default is local
    replicated = client.post("/v1/workflows/pipeline?durability=replicated", json={"id": "r", "args": [1]})
    assert replicated.status_code == 201 and confirm.calls == [7.0]
    waited = client.post("/v1/workflows/pipeline?durability=replicated&wait=true", json={"id": "w", "args": [2]})
    assert waited.status_code == 201 and waited.json()["result"] == 16  # the result, confirmed after it
    assert len(confirm.calls) == 2


def test_the_agent_default_can_be_replicated(make_client: Callable[..., TestClient]) -> None:
    confirm = Recorder()
    client = make_client(confirm, durability="replicated")
    assert client.post("/v1/workflows/pipeline", json={"args": [1]}).status_code == 201 and len(confirm.calls) == 1
    assert client.post("/v1/workflows/pipeline?durability=local", json={"args": [1]}).status_code == 201
    assert len(confirm.calls) == 1
    assert client.get("/readyz").json()["durability"] == "replicated"


@pytest.mark.parametrize(("timed_out", "status"), [(True, 504), (False, 503)])
def test_an_unconfirmed_replica_is_a_stable_code_and_the_workflow_still_exists(
    make_client: Callable[..., TestClient], timed_out: bool, status: int
) -> None:
    error = ReplicationUnconfirmed("the replica did not confirm within 7s", timed_out=timed_out)
    client = make_client(Recorder(error))
    response = client.post("/v1/workflows/pipeline?durability=replicated", json={"id": "u", "args": [1]})
    assert response.status_code == status
    body = response.json()
    assert body["code"] == "replication_unconfirmed" and body["workflow_id"] == "u"
    assert "was started and committed locally" in body["message"] and "it still exists" in body["message"]
    assert client.get("/v1/workflows/u", params={"wait": 5}).json()["status"] == "SUCCESS"
    # retrying the same id is the way to ask again: idempotent start, one more confirmation
    assert (
        client.post("/v1/workflows/pipeline?durability=replicated", json={"id": "u", "args": [1]}).status_code == status
    )


def test_replicated_needs_a_replicating_agent_and_a_known_mode(make_client: Callable[..., TestClient]) -> None:
    client = make_client(None)
    refused = client.post("/v1/workflows/pipeline?durability=replicated", json={"id": "n", "args": [1]})
    assert refused.status_code == 422 and "does not replicate" in refused.json()["message"]
    assert client.get("/v1/workflows/n").status_code == 404  # refused before anything started
    odd = client.post("/v1/workflows/pipeline?durability=eventually", json={"args": [1]})
    assert odd.status_code == 422 and odd.json()["code"] == "invalid_request"
    assert client.post("/v1/workflows/pipeline?wait=soon", json={"args": [1]}).status_code == 422
    with pytest.raises(ValueError, match="confirmer"):
        create_app(lambda: Runtime(":memory:", features_bundle), durability="replicated")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(fake: FakeLitestream, clock: Clock) -> ReplicationMonitor:
    identity = AgentIdentity.from_env({**GOOD, "LITEFLEET_SYNC_INTERVAL": "1"}).with_secrets(SECRETS)
    return ReplicationMonitor(identity, sync=fake.sync, clock=clock)  # probes every 5 s


def test_replication_state_ok_lagging_stalled() -> None:
    clock = Clock()
    fake = FakeLitestream(SyncResult(10, 10))
    mon = monitor(fake, clock)
    mon.probe()
    assert mon.status()["state"] == "ok" and mon.status()["lag_txids"] == 0
    fake.answers = [SyncResult(20, 15)]  # probes succeed, but writes keep outrunning the replica
    for _ in range(3):
        clock.now += 5
        mon.probe()
    status = mon.status()
    assert status["state"] == "lagging" and status["lag_txids"] == 5 and status["seconds_since_sync"] == 15
    fake.answers = [SyncResult(30, 30)]
    mon.probe()
    assert mon.status()["state"] == "ok"
    fake.answers = [LitestreamError("litestream sync failed: store down")]  # one failing probe: stalled
    clock.now += 5
    mon.probe()
    assert mon.status()["state"] == "stalled" and "store down" in mon.status()["last_error"]
    fake.answers = [SyncResult(30, 30)]
    mon.probe()
    assert mon.status()["state"] == "ok"
    clock.now += 16  # no probe answered for > 3 intervals (hung on a frozen store): stalled too
    assert mon.status()["state"] == "stalled"


def test_replication_state_is_in_readyz_and_metrics(make_client: Callable[..., TestClient]) -> None:
    clock = Clock()
    mon = monitor(FakeLitestream(LitestreamError("no socket")), clock)
    mon.probe()
    client = make_client(None, replication=mon)
    assert client.get("/readyz").json()["replication"]["state"] == "stalled"
    text = client.get("/metrics").text
    assert 'litefleet_replication_state{state="stalled"} 1.0' in text
    assert 'litefleet_replication_state{state="ok"} 0.0' in text


def test_unconfirmed_commits_grow_while_the_store_is_frozen_and_fall_once_a_sync_confirms(tmp_path: Path) -> None:
    """Litestream's txids stand still while it cannot upload; the runtime's own commit count does not."""
    clock = Clock()
    store = Store(str(tmp_path / "agent.db"))
    try:
        identity = AgentIdentity.from_env({**GOOD, "LITEFLEET_SYNC_INTERVAL": "1"}).with_secrets(SECRETS)
        fake = FakeLitestream(SyncResult(10, 10))
        mon = ReplicationMonitor(identity, sync=fake.sync, commits=lambda: store.commits, clock=clock)
        store.bump_counter("acknowledged")
        mon.probe()  # began after that commit and answered caught up: confirmed
        assert mon.status()["unconfirmed_commits"] == 0
        fake.answers = [LitestreamError("litestream sync timed out: store frozen")]
        for _ in range(5):
            store.bump_counter("acknowledged")
            clock.now += 5
            mon.probe()
        frozen = mon.status()
        assert frozen["state"] == "stalled" and frozen["unconfirmed_commits"] == 5
        assert frozen["local_txid"] == 10 and frozen["lag_txids"] == 0  # what Litestream's view alone would say
        fake.answers = [SyncResult(12, 11)]  # the store is back, the replica not caught up yet: still unconfirmed
        mon.probe()
        assert mon.status()["unconfirmed_commits"] == 5
        fake.answers = [SyncResult(12, 12)]
        mon.probe()
        assert mon.status()["unconfirmed_commits"] == 0
    finally:
        store.close()
