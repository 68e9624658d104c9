"""No split-brain acknowledgements (issue 11): the fence watch is the incarnation's lease on CURRENT; without a
confirmation for `lease_timeout` the agent acknowledges no write. The store is a fake `read_current`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agent_image import Runtime
from agent_image.container.fence import FenceWatch
from agent_image.container.identity import AgentIdentity
from agent_image.container.s3 import S3Error
from agent_image.server import create_app
from tests.unit.agent_image import features_bundle
from tests.unit.agent_image.test_identity import GOOD, SECRETS

GENERATION = 5


class FakeStore:
    """CURRENT as the fence reads it: a generation, or an exception to raise; every read advances the clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.current: int | Exception | None = GENERATION
        self.read_takes = 0.0

    def clock(self) -> float:
        return self.now

    def read(self) -> int | None:
        self.now += self.read_takes
        if isinstance(self.current, Exception):
            raise self.current
        return self.current


def watch(store: FakeStore, on_superseded: Callable[[int | None], None] = lambda _: None) -> FenceWatch:
    env = {**GOOD, "LITEFLEET_FENCE_INTERVAL": "1", "LITEFLEET_LEASE_TIMEOUT": "3"}
    identity = AgentIdentity.from_env(env).with_secrets(SECRETS)
    return FenceWatch(identity, on_superseded, read_current=store.read, clock=store.clock)


def test_the_lease_is_held_only_within_the_timeout_of_the_last_confirmation() -> None:
    store = FakeStore()
    fence = watch(store)
    assert not fence.held() and fence.status()["state"] == "unconfirmed"  # nothing confirmed yet
    assert fence.check() is True and fence.held()
    store.current = OSError("connection refused")
    for _ in range(3):  # the store is unreachable: not a verdict, the agent keeps running ...
        store.now += 1
        assert fence.check() is True
    assert fence.held()  # ... 3 s after the last confirmation: still inside the lease
    store.now += 0.5
    assert not fence.held()
    status = fence.status()
    assert status["state"] == "unconfirmed" and status["seconds_since_confirmed"] == 3.5
    assert status["last_error"] == "connection refused" and status["timeout"] == 3.0
    store.current = GENERATION  # the store is back: the next check confirms again
    assert fence.check() is True and fence.held() and fence.status()["last_error"] is None


def test_a_slow_answer_counts_from_when_the_read_was_sent() -> None:
    """A read that takes 2.9 s confirms the lease as of its start: a thawed agent cannot stretch it."""
    store = FakeStore()
    fence = watch(store)
    store.read_takes = 2.9
    fence.check()
    assert fence.seconds_since_confirmed() == pytest.approx(2.9)
    store.now += 0.2
    assert not fence.held()


def test_other_s3_errors_leave_the_lease_to_run_out_but_a_refused_key_supersedes() -> None:
    store, seen = FakeStore(), list[int | None]()
    fence = watch(store, seen.append)
    fence.check()
    store.current = S3Error(500, "internal")
    assert fence.check() is True and not fence.superseded
    store.current = S3Error(403, "AccessDenied")
    assert fence.check() is False and fence.superseded and seen == [None]
    assert not fence.held() and fence.status()["state"] == "superseded"


def test_another_generation_in_current_supersedes_at_once() -> None:
    store, seen = FakeStore(), list[int | None]()
    fence = watch(store, seen.append)
    fence.check()
    store.current = GENERATION + 1
    assert fence.check() is False and seen == [GENERATION + 1] and not fence.held()


class SwitchLease:
    """A lease a test turns on and off; `flip_after` makes it drop after that many `held()` calls."""

    def __init__(self) -> None:
        self.holding = True
        self.flip_after: int | None = None

    def held(self) -> bool:
        if self.flip_after is not None:
            self.flip_after -= 1
            if self.flip_after < 0:
                self.holding = False
        return self.holding

    def status(self) -> dict[str, object]:
        return {"state": "confirmed" if self.holding else "unconfirmed", "seconds_since_confirmed": 1.0}

    def retry_after(self) -> int:
        return 5


@pytest.fixture
def lease() -> SwitchLease:
    return SwitchLease()


@pytest.fixture
def client(tmp_path: Path, lease: SwitchLease) -> Iterator[TestClient]:
    app = create_app(lambda: Runtime(str(tmp_path / "agent.db"), features_bundle), lease=lease)
    with TestClient(app) as test_client:
        yield test_client
    features_bundle.gate.set()


WRITES = [
    ("/v1/workflows/pipeline", {"id": "new", "args": [1]}),
    ("/v1/workflows/l1/cancel", None),
    ("/v1/workflows/p1/fork?from_step=1&new_id=forked", None),
    ("/v1/workflows/l1/messages/inbox", {"hello": 1}),
]


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_without_the_lease_writes_are_refused_and_reads_still_answer(
    client: TestClient, lease: SwitchLease, path: str, body: object
) -> None:
    client.post("/v1/workflows/listener", json={"id": "l1", "args": [30]})
    client.post("/v1/workflows/pipeline", json={"id": "p1", "args": [1]})
    client.get("/v1/workflows/p1", params={"wait": 5})
    lease.holding = False
    refused = client.post(path, json=body)
    assert refused.status_code == 503 and refused.json()["code"] == "lease_unconfirmed"
    assert refused.headers["retry-after"] == "5"
    assert client.get("/v1/workflows/l1").status_code == 200  # reads are served
    assert client.get("/v1/workflows").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["reason"] == "lease_unconfirmed" and ready.json()["lease"]["state"] == "unconfirmed"
    assert "litefleet_lease_held 0.0" in client.get("/metrics").text
    lease.holding = True  # a check succeeded again
    assert client.post(path, json=body).status_code in (200, 201, 202)
    assert client.get("/readyz").json()["ready"] is True


def test_nothing_was_started_by_a_refused_start(client: TestClient, lease: SwitchLease) -> None:
    lease.holding = False
    client.post("/v1/workflows/pipeline", json={"id": "never", "args": [1]})
    assert client.get("/v1/workflows/never").json()["code"] == "workflow_not_found"


def test_a_lease_lost_while_the_write_ran_is_not_acknowledged(client: TestClient, lease: SwitchLease) -> None:
    """Kill point: the lease expires between admission and the answer (a freeze mid-request). The start
    happened locally, but the caller gets 503, not 201, and is told so."""
    lease.flip_after = 1  # held at admission, lost by the time the answer is due
    response = client.post("/v1/workflows/pipeline", json={"id": "mid", "args": [1]})
    assert response.status_code == 503 and response.json()["code"] == "lease_unconfirmed"
    assert "NOT acknowledged" in response.json()["message"]
    assert client.get("/v1/workflows/mid").status_code == 200  # it exists locally, unacknowledged
