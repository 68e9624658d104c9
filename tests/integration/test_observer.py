"""The observer against the real parts, no Docker: an embedded SeaweedFS on 127.0.0.1, real agent runtimes on the
host writing their SQLite files, each replicated by a host `litestream replicate`, and the observer's own
`litestream restore` processes. Nothing here calls an agent: every answer comes from the replicas."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_image import Bundle, Runtime, step, workflow
from agent_image.container import litestream
from control_plane.observer import CopyKind, Observer, ObserverSettings, WorkflowNotInCopy
from control_plane.storage import ObjectStorage
from control_plane.storage.seaweed import EmbeddedStore
from tests.integration.conftest import admin_storage, eventually, start_store

# -- a tiny bundle: one workflow that succeeds, one that fails -------------------------------------------------------


@step
def _compose(name: str) -> str:
    return f"Hello, {name}!"


@step
def _explode(message: str) -> str:
    raise ValueError(message)


@workflow
def greet(name: str) -> str:
    return _compose(name)


@workflow
def fail(message: str) -> str:
    return _explode(message)


BUNDLE = Bundle.from_module(sys.modules[__name__])


# -- an agent on the host: runtime + litestream replicate to gen-g ---------------------------------------------------


@dataclass
class HostAgent:
    tenant: str
    agent: int
    generation: int
    runtime: Runtime
    replicator: subprocess.Popen[bytes]
    db: Path
    socket: Path

    def sync(self) -> None:
        """Wait until the replica holds every committed transaction."""
        eventually(lambda: litestream.sync_wait(self.socket, self.db, timeout=10).caught_up, timeout=20)

    def stop(self) -> None:
        """Hibernate: the runtime closes, then litestream makes its final sync and exits."""
        self.runtime.close()
        self.sync()
        if self.replicator.poll() is None:
            self.replicator.terminate()
            self.replicator.wait(30)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    embedded = start_store(tmp_path_factory.mktemp("observer-store"), "127.0.0.1")
    yield embedded
    embedded.down()


@pytest.fixture(scope="module")
def storage(store: EmbeddedStore) -> ObjectStorage:
    return admin_storage(store)


@pytest.fixture
def host_agents(store: EmbeddedStore, storage: ObjectStorage, tmp_path: Path) -> Iterator[list[HostAgent]]:
    started: list[HostAgent] = []
    yield started
    for agent in started:
        if agent.replicator.poll() is None:
            agent.runtime.close()
            agent.replicator.terminate()
            agent.replicator.wait(30)


def run_agent(
    started: list[HostAgent], store: EmbeddedStore, storage: ObjectStorage, root: Path, tenant: str, agent: int = 0
) -> HostAgent:
    generation = 1
    storage.advance_current(tenant, agent, generation, storage.read_current(tenant, agent))
    directory = root / f"{tenant}-{agent}"
    directory.mkdir()
    db, socket = directory / "agent.db", directory / "ls.sock"
    runtime = Runtime(str(db), BUNDLE)
    url = storage.replica_url(tenant, agent, generation)
    document = litestream.config(db, url, storage.endpoint, sync_interval=0.1, monitor_interval=0.1, socket_path=socket)
    config = litestream.write_config(document, directory / "litestream.json")
    replicator = subprocess.Popen(
        [litestream.binary(), "replicate", "-config", str(config)],
        env=litestream.environment(store.admin),
        stdout=(directory / "litestream.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    host = HostAgent(tenant, agent, generation, runtime, replicator, db, socket)
    started.append(host)
    eventually(lambda: socket.exists(), timeout=20)
    host.sync()
    return host


@pytest.fixture
def observer(storage: ObjectStorage, tmp_path: Path) -> Iterator[Observer]:
    settings = ObserverSettings(
        cache_dir=tmp_path / "observer", max_followers=2, follow_interval=0.1, periodic_interval=1.0, tick=0.2
    )
    obs = Observer(storage, settings)
    obs.start()
    try:
        yield obs
    finally:
        pids = obs.pids()
        obs.close()
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


# -- tests ----------------------------------------------------------------------------------------------------------


def test_follow_copy_matches_what_the_runtime_lists(
    store: EmbeddedStore, storage: ObjectStorage, observer: Observer, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    agent = run_agent(host_agents, store, storage, tmp_path, "acme")
    for name in ("ada", "bob", "cy"):
        agent.runtime.start(greet, [name]).result(10)
    with pytest.raises(Exception, match="boom"):
        agent.runtime.start(fail, ["boom"], id="doomed").result(10)
    agent.sync()

    state = observer.follow("acme", 0, 1)
    assert state.kind is CopyKind.follow and state.pid is not None
    observer.wait_ready("acme", 0, 1, timeout=20)

    expected = {(w.id, w.status) for w in agent.runtime.list_workflows()}
    eventually(lambda: {(w.id, w.status) for w in observer.workflows("acme", 0).workflows} == expected, timeout=10)
    listing = observer.workflows("acme", 0, check_replica=True)
    assert listing.source.kind is CopyKind.follow
    assert listing.source.generation == 1 and listing.source.schema_version == 1
    assert listing.source.freshness.txid >= 1 and listing.source.freshness.applied_at is not None
    assert listing.source.freshness.replica_txid is not None
    assert listing.source.freshness.seconds_behind is not None and listing.source.freshness.checked_at is not None
    assert listing.counts == {"SUCCESS": 3, "ERROR": 1}
    by_id = {w.id: w for w in listing.workflows}
    mine = {w.id: w for w in agent.runtime.list_workflows()}
    for workflow_id, seen in by_id.items():
        assert seen.name == mine[workflow_id].name
        assert seen.result == mine[workflow_id].result
        assert seen.created_at.timestamp() == pytest.approx(mine[workflow_id].created_at)

    detail = observer.workflow("acme", 0, "doomed")
    assert detail.workflow.status == "ERROR"
    assert detail.workflow.error is not None and detail.workflow.error.message.endswith("boom")
    assert [s.name for s in detail.steps] == [s.name for s in agent.runtime.steps("doomed")]
    assert detail.errors and detail.errors[0].error is not None
    with pytest.raises(WorkflowNotInCopy):
        observer.workflow("acme", 0, "no-such-workflow")

    problems = observer.problems()
    assert [(p.source.tenant, p.workflow.id, p.workflow.status) for p in problems.workflows] == [
        ("acme", "doomed", "ERROR")
    ]
    assert problems.unavailable == [] and problems.agents_checked == 1


def test_a_workflow_started_after_follow_shows_up_within_seconds(
    store: EmbeddedStore, storage: ObjectStorage, observer: Observer, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    agent = run_agent(host_agents, store, storage, tmp_path, "fresh")
    observer.follow("fresh", 0, 1)
    observer.wait_ready("fresh", 0, 1, timeout=20)
    assert observer.workflows("fresh", 0).workflows == []

    agent.runtime.start(greet, ["late"], id="late").result(10)

    # the agent's 0.1 s sync + the follower's poll: about a second on a quiet machine (bench/observer.py measures
    # staleness); the bound leaves room for a CI machine at load 10. The start and the finish can reach the store in
    # two syncs, so the copy may show the workflow RUNNING first; what must arrive is the finished row.
    def finished() -> bool:
        listing = observer.workflows("fresh", 0).workflows
        return [(w.id, w.status, w.result) for w in listing] == [("late", "SUCCESS", "Hello, late!")]

    eventually(finished, timeout=15, interval=0.05)


def test_point_in_time_snapshot_shows_the_state_as_of_then(
    store: EmbeddedStore, storage: ObjectStorage, observer: Observer, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    agent = run_agent(host_agents, store, storage, tmp_path, "pit")
    for name in ("one", "two"):
        agent.runtime.start(greet, [name], id=name).result(10)
    agent.sync()
    time.sleep(0.3)
    then = dt.datetime.now(dt.UTC)
    time.sleep(0.3)
    agent.runtime.start(greet, ["three"], id="three").result(10)
    with pytest.raises(Exception, match="later"):
        agent.runtime.start(fail, ["later"], id="later").result(10)
    agent.sync()

    past = observer.workflows("pit", 0, at=then)
    assert past.source.kind is CopyKind.snapshot and past.source.freshness.as_of == then
    assert sorted(w.id for w in past.workflows) == ["one", "two"]
    assert observer.workflows("pit", 0, at=then).source == past.source  # served from the cache

    now = observer.workflows("pit", 0)  # not followed: a snapshot of the newest state
    assert now.source.kind is CopyKind.snapshot
    assert sorted(w.id for w in now.workflows) == ["later", "one", "three", "two"]
    assert now.source.freshness.txid > past.source.freshness.txid
    assert now.source.freshness.seconds_behind == 0.0

    by_txid = observer.workflows("pit", 0, txid=past.source.freshness.txid)
    assert sorted(w.id for w in by_txid.workflows) == ["one", "two"]
    with pytest.raises(WorkflowNotInCopy):
        observer.workflow("pit", 0, "three", at=then)


def test_a_hibernated_agents_finished_workflows_are_visible_from_its_replica(
    store: EmbeddedStore, storage: ObjectStorage, observer: Observer, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    agent = run_agent(host_agents, store, storage, tmp_path, "sleepy")
    ids = [agent.runtime.start(greet, [f"n{i}"], id=f"wf-{i}").id for i in range(4)]
    for workflow_id in ids:
        agent.runtime.wait(workflow_id, 10)
    expected = {(w.id, w.status) for w in agent.runtime.list_workflows()}
    agent.stop()
    assert agent.replicator.returncode is not None

    listing = observer.workflows("sleepy", 0)
    assert {(w.id, w.status) for w in listing.workflows} == expected
    assert all(w.status == "SUCCESS" for w in listing.workflows)
    assert listing.source.generation == 1 and listing.source.kind is CopyKind.snapshot

    found = observer.find_workflow("sleepy", "wf-2")
    assert found is not None and found.workflow.result == "Hello, n2!" and found.source.agent == 0
    assert observer.find_workflow("sleepy", "never-ran") is None


def test_followers_are_capped_and_close_leaves_no_litestream(
    store: EmbeddedStore, storage: ObjectStorage, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    tenants = ["cap-a", "cap-b", "cap-c"]
    agents = [run_agent(host_agents, store, storage, tmp_path, t) for t in tenants]
    with pytest.raises(Exception, match="capped"):
        agents[2].runtime.start(fail, ["capped"], id="cap-fail").result(10)
    agents[2].sync()
    settings = ObserverSettings(
        cache_dir=tmp_path / "capped", max_followers=2, follow_interval=0.1, periodic_interval=0.5, tick=0.2
    )
    observer = Observer(storage, settings)
    try:
        observer.start()
        states = [observer.follow(t, 0, 1) for t in tenants]
        assert [s.kind for s in states] == [CopyKind.follow, CopyKind.follow, CopyKind.periodic]
        pids = observer.pids()
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        for t in tenants:
            observer.wait_ready(t, 0, 1, timeout=20)
        periodic = observer.workflows("cap-c", 0)
        assert periodic.source.kind is CopyKind.periodic
        assert periodic.source.freshness.replica_txid is not None and periodic.source.freshness.checked_at is not None
        assert [w.id for w in periodic.workflows] == ["cap-fail"]
        assert sum(1 for s in observer.followed() if s.kind is CopyKind.follow) == 2

        report = observer.problems()
        assert [(p.source.tenant, p.source.kind, p.workflow.id) for p in report.workflows] == [
            ("cap-c", CopyKind.periodic, "cap-fail")
        ]
        assert report.agents_checked == 3

        # A write to the periodic agent reaches its copy at the next restore.
        agents[2].runtime.start(greet, ["later"], id="cap-later").result(10)
        eventually(lambda: "cap-later" in {w.id for w in observer.workflows("cap-c", 0).workflows}, timeout=10)

        assert observer.unfollow("cap-a", 0) == 1 and observer.unfollow("cap-a", 0) == 0
        assert not _alive(pids[0])
        # the freed slot goes to the periodic agent at the next upkeep pass
        eventually(lambda: sum(1 for s in observer.followed() if s.kind is CopyKind.follow) == 2, timeout=5)
        live = observer.pids()
    finally:
        observer.close()
    assert all(not _alive(pid) for pid in [*pids, *live])
    assert not list((tmp_path / "capped" / "pids").glob("*.pid"))
    observer.close()  # twice is harmless


def test_a_new_observer_stops_followers_left_by_a_crashed_one(
    store: EmbeddedStore, storage: ObjectStorage, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    run_agent(host_agents, store, storage, tmp_path, "orphan")
    settings = ObserverSettings(cache_dir=tmp_path / "crashy", follow_interval=0.1)
    crashed = Observer(storage, settings)
    crashed.follow("orphan", 0, 1)
    [pid] = crashed.pids()
    assert _alive(pid)
    # The owner "dies" without close(): its follower keeps running until the next observer on this cache_dir.
    successor = Observer(storage, settings)
    try:
        eventually(lambda: not _alive(pid), timeout=10)
    finally:
        successor.close()
        crashed.close()


_OWNER = """
import os, sys, time
from pathlib import Path
from control_plane.observer import Observer, ObserverSettings
from control_plane.storage import ObjectStorage
endpoint, bucket, cache = sys.argv[1:4]
storage = ObjectStorage(endpoint, os.environ["KEY"], os.environ["SECRET"], bucket)
observer = Observer(storage, ObserverSettings(cache_dir=Path(cache), follow_interval=0.1))
observer.follow("killed", 0, 1)
print("pids", *observer.pids(), flush=True)
time.sleep(600)
"""


def test_a_kill_9_of_the_control_plane_ends_its_followers_too(
    store: EmbeddedStore, storage: ObjectStorage, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    """No successor on the same cache_dir needed: a follower must not poll the store for ever after its owner is
    gone (two control planes on one fleet, one killed, is the case that found it)."""
    run_agent(host_agents, store, storage, tmp_path, "killed")
    key, secret = store.admin
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, storage.endpoint, storage.bucket, str(tmp_path / "killed-cache")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KEY": key, "SECRET": secret},
    )
    try:
        assert owner.stdout is not None
        line = ""
        while not line.startswith("pids "):  # the observer's own log lines come first
            line = owner.stdout.readline()
            assert line, "the owner exited before it followed"
        [pid] = [int(word) for word in line.split()[1:]]
        time.sleep(1)  # the follower is past its start (its first restore), polling
        assert _alive(pid)
    finally:
        owner.kill()
        owner.wait(10)
    try:
        eventually(lambda: not _alive(pid), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the orphan this test looks for, when it is there


def test_the_live_follower_moves_to_the_busier_agent_without_a_gap(
    store: EmbeddedStore, storage: ObjectStorage, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    quiet, busy = (run_agent(host_agents, store, storage, tmp_path, t) for t in ("quiet", "busy"))
    settings = ObserverSettings(
        cache_dir=tmp_path / "swap",
        max_followers=1,
        follow_interval=0.1,
        periodic_interval=0.5,
        tick=0.2,
        rebalance_margin=0.5,
        rebalance_interval=0.5,
    )
    observer = Observer(storage, settings)
    try:
        assert observer.follow("quiet", 0, 1).kind is CopyKind.follow
        assert observer.follow("busy", 0, 1).kind is CopyKind.periodic
        observer.start()
        observer.wait_ready("busy", 0, 1, timeout=20)
        time.sleep(1.0)  # let "quiet" go quiet
        for i in range(3):
            busy.runtime.start(greet, [f"b{i}"], id=f"b{i}").result(10)
        kinds_seen: set[CopyKind] = set()

        def promoted() -> bool:
            # It keeps answering from a copy while it moves (never from a fallback snapshot).
            kinds_seen.add(observer.workflows("busy", 0, 1).source.kind)
            state = observer.follow_state("busy", 0, 1)
            return state is not None and state.kind is CopyKind.follow and state.ready

        eventually(promoted, timeout=20, interval=0.05)
        assert CopyKind.snapshot not in kinds_seen
        quiet_state = observer.follow_state("quiet", 0, 1)
        assert quiet_state is not None and quiet_state.kind is CopyKind.periodic and quiet_state.ready
        assert observer.workflows("quiet", 0, 1).source.kind is CopyKind.periodic  # the demoted follower's file
        assert len(observer.pids()) == 1
        eventually(lambda: len(observer.workflows("busy", 0, 1).workflows) == 3, timeout=10)
        assert quiet.runtime.list_workflows() == [] and observer.workflows("quiet", 0, 1).workflows == []
    finally:
        observer.close()


def test_the_observer_reads_with_its_own_read_only_key(
    store: EmbeddedStore, storage: ObjectStorage, host_agents: list[HostAgent], tmp_path: Path
) -> None:
    from control_plane.storage import SeaweedCredentials

    agent = run_agent(host_agents, store, storage, tmp_path, "keyed")
    agent.runtime.start(greet, ["kim"], id="kim").result(10)
    agent.sync()
    key = SeaweedCredentials(store, storage).issue_observer()
    settings = ObserverSettings(cache_dir=tmp_path / "keyed-observer", follow_interval=0.1, tick=0.2)
    with Observer(storage, settings, credentials=(key.access_key, key.secret_key)) as keyed:
        keyed.start()
        keyed.follow("keyed", 0, 1)
        keyed.wait_ready("keyed", 0, 1, timeout=20)
        assert [w.id for w in keyed.workflows("keyed", 0).workflows] == ["kim"]
    reader = ObjectStorage(storage.endpoint, key.access_key, key.secret_key, storage.bucket)
    assert reader.read_current("keyed", 0) is not None  # Read + List on fleet/tenants/*
    with pytest.raises(Exception, match=r"AccessDenied|Forbidden|403"):
        reader.s3.put_object(Bucket=storage.bucket, Key=storage.tenant_prefix("keyed") + "x", Body=b"no")
