"""Unreachable is not dead: a node is declared down (and failed over) only after several missed heartbeats."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.db.models import Agent, AgentState, Event, Node, NodeState, Operation, OperationKind
from control_plane.drivers.agent_http import Readiness
from control_plane.drivers.base import Incarnation
from control_plane.drivers.fake import FakeDriver
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.health import HealthMonitor
from control_plane.settings import Settings


def test_one_missed_heartbeat_is_not_death_three_are(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Node(name="ghost", engine_url="tcp://127.0.0.1:9"))  # nothing listens there
        session.commit()
    fleet: Any = Fleet(engine, Settings(), storage=None, credentials=None)  # type: ignore[arg-type]
    monitor = HealthMonitor(engine, fleet, Settings(node_grace_heartbeats=3))

    for expected in (NodeState.ready, NodeState.ready, NodeState.down):
        monitor.beat()
        with Session(engine) as session:
            node = session.get(Node, "ghost")
            assert node is not None and node.state == expected
            failovers = session.exec(select(Operation).where(Operation.kind == OperationKind.failover)).all()
            assert len(failovers) == (1 if expected == NodeState.down else 0)
    monitor.beat()  # still down: no second fail-over
    with Session(engine) as session:
        assert len(session.exec(select(Operation)).all()) == 1
        downs = session.exec(select(Event).where(Event.kind == "node.down")).all()
        assert [event.node for event in downs] == ["ghost"]


def test_a_beat_holds_no_write_transaction_while_it_pings(engine: Engine) -> None:
    """Each node's ping writes through a connection of its own: had the beat kept a write transaction open across
    the pings (as it once did), SQLite would make that write wait for it."""
    from control_plane.drivers.fake import FakeDriver
    from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

    class WritingDriver(FakeDriver):
        def ping(self) -> None:
            with Session(engine) as session:
                session.add(Event(kind="test.pinged", message=self.engine_url))
                session.commit()
            super().ping()

    with Session(engine) as session:
        session.add_all([Node(name=f"n{i}", engine_url=f"fake-{i}", missed_heartbeats=1) for i in range(3)])
        session.commit()
    fleet = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=WritingDriver)
    started = time.monotonic()
    HealthMonitor(engine, fleet, Settings()).beat()
    assert time.monotonic() - started < 10
    with Session(engine) as session:
        assert len(session.exec(select(Event).where(Event.kind == "test.pinged")).all()) == 3
        assert {node.missed_heartbeats for node in session.exec(select(Node)).all()} == {0}


class _RunningDriver(FakeDriver):
    """An engine on which every container asked about is running (no repair is queued for a silent agent)."""

    def inspect(self, name: str) -> Incarnation | None:
        return Incarnation(name, "t", 0, 1, "running", None, None)

    def list_managed(self, fleet: str | None = None) -> list[Incarnation]:
        return []


# -- parallel heartbeats and probes, against real local HTTP servers ---------------------------------------------


def _docker_fleet(engine: Engine, settings: Settings) -> Any:
    from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

    return Fleet(engine, settings, FakeReplicas(), FakeCredentials())  # type: ignore[arg-type]


def test_a_frozen_engine_is_declared_down_within_interval_times_grace_plus_timeout(engine: Engine) -> None:
    """Two nodes with a real (scripted) Docker API each; one freezes (accepts connections, never answers, as a
    SIGSTOPped dockerd does). It is down within `interval x grace + timeout`, and the other node's heartbeats
    go on at their own rate meanwhile."""
    from tests.unit.control_plane.hanging import docker_engine, serving

    settings = Settings(heartbeat_interval=0.5, node_grace_heartbeats=3, heartbeat_timeout=0.5)
    bound = settings.heartbeat_interval * settings.node_grace_heartbeats + settings.heartbeat_timeout
    with serving(docker_engine) as frozen, serving(docker_engine) as healthy:
        with Session(engine) as session:
            session.add(Node(name="frozen", engine_url=f"tcp://127.0.0.1:{frozen.port}"))
            session.add(Node(name="healthy", engine_url=f"tcp://127.0.0.1:{healthy.port}"))
            session.commit()
        monitor = HealthMonitor(engine, _docker_fleet(engine, settings), settings)
        monitor.heartbeat()  # both answer: their drivers are made (the engine API version negotiated)
        monitor.start()
        try:
            time.sleep(0.2)
            frozen.frozen.set()
            froze_at = time.time()
            seen: list[float] = []
            deadline = time.monotonic() + bound + 5
            while time.monotonic() < deadline:
                with Session(engine) as session:
                    node, other = session.get(Node, "frozen"), session.get(Node, "healthy")
                    assert node is not None and other is not None
                    seen.append(other.last_seen_at or 0)
                    if node.state == NodeState.down:
                        down = session.exec(select(Event).where(Event.kind == "node.down")).one()
                        break
                time.sleep(0.05)
            else:
                raise AssertionError("the frozen node was never declared down")
        finally:
            monitor.stop()
            frozen.frozen.clear()
    detected = down.at - froze_at
    print(f"frozen engine declared down after {detected:.2f}s (bound {bound:.2f}s)")
    assert detected <= bound + 0.3  # the round's one short write
    assert len(set(seen)) >= 3  # the healthy node was seen again in (nearly) every round meanwhile


def test_agents_are_probed_at_once_and_no_write_waits_for_a_round(engine: Engine) -> None:
    """200 agents whose /readyz takes 100 ms each (20 s one after another), one of them frozen: the round takes
    about one probe timeout (plus what this process's CPU allows), and a write made during it is not kept
    waiting."""
    from tests.unit.control_plane.hanging import serving

    def readyz(_: str, path: str, __: bytes) -> tuple[int, Any]:
        return 200, {"replication": {"local_txid": 7, "replica_txid": 7, "lag_txids": 0, "seconds_since_sync": 0.5}}

    settings = Settings()
    with serving(readyz, delay=0.1) as agents, serving(readyz) as frozen:
        frozen.frozen.set()
        with Session(engine) as session:
            session.add(Node(name="n1", engine_url="fake-1"))
            for i in range(200):
                session.add(
                    Agent(
                        id=f"t{i}/0",
                        tenant=f"t{i}",
                        ordinal=0,
                        generation=1,
                        node="n1",
                        state=AgentState.running,
                        url=frozen.url if i == 0 else agents.url,
                        agent_token=f"token-{i}",
                    )
                )
            session.commit()
        from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

        fleet = Fleet(engine, settings, FakeReplicas(), FakeCredentials(), make_driver=_RunningDriver)
        monitor = HealthMonitor(engine, fleet, settings)
        waited: list[float] = []

        def write() -> None:
            time.sleep(0.3)
            started = time.monotonic()
            with Session(engine) as session:
                session.add(Event(kind="test.write", message="during a probe round"))
                session.commit()
            waited.append(time.monotonic() - started)

        writer = threading.Thread(target=write)
        started = time.monotonic()
        writer.start()
        monitor.probe()
        took = time.monotonic() - started
        writer.join()
        monitor.stop()
        frozen.frozen.clear()
    print(f"probe round of 200 agents (one frozen): {took:.2f}s; a write during it waited {waited[0] * 1000:.1f} ms")
    assert took < 8  # one probe timeout (the frozen agent) with the rest at once, not 22 s one after another
    assert waited[0] < 0.5
    with Session(engine) as session:
        rows = {a.id: a for a in session.exec(select(Agent)).all()}
    assert rows["t0/0"].ready is False and rows["t0/0"].probed_at is not None
    assert all(rows[f"t{i}/0"].ready and rows[f"t{i}/0"].replica_txid == 7 for i in range(1, 200))


def test_an_agent_whose_probe_raises_is_silent_and_every_other_agent_is_recorded(engine: Engine) -> None:
    """Whatever one (hostile) agent answers, the round goes on: an exception in its probe made the whole round
    record nothing, every round."""
    from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

    with Session(engine) as session:
        session.add(Node(name="n1", engine_url="fake-1"))
        for i in range(3):
            session.add(
                Agent(
                    id=f"t{i}/0", tenant=f"t{i}", ordinal=0, generation=1, node="n1", state=AgentState.running,
                    url=f"http://agent-{i}", agent_token=f"token-{i}",
                )
            )  # fmt: skip
        session.commit()
    fleet = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=_RunningDriver)

    def readyz(url: str, token: str, timeout: float = 2.0) -> Readiness | None:
        if url == "http://agent-1":
            raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")
        return Readiness(ready=True, local_txid=5, replica_txid=5)

    fleet.agents_api.readyz = readyz  # type: ignore[method-assign]
    monitor = HealthMonitor(engine, fleet, Settings())
    try:
        monitor.probe()
    finally:
        monitor.stop()
    with Session(engine) as session:
        rows = {a.id: a for a in session.exec(select(Agent)).all()}
    assert rows["t1/0"].ready is False and rows["t1/0"].probed_at is not None
    assert rows["t0/0"].ready and rows["t2/0"].ready and rows["t2/0"].replica_txid == 5


def test_a_round_meeting_many_new_nodes_makes_their_drivers_side_by_side(engine: Engine) -> None:
    """A restarted control plane's first heartbeat makes a driver per node, and a real one asks its engine for its
    API version first. Made one at a time (under the fleet's lock, as they once were), 1,000 of them outlast the
    ping timeout and nodes miss beats they answered: here four makers meet at a barrier, which only passes when
    all four are being made at once."""
    from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

    all_making = threading.Barrier(4, timeout=5)

    def make(url: str) -> FakeDriver:
        all_making.wait()
        return FakeDriver(url)

    with Session(engine) as session:
        session.add_all([Node(name=f"n{i}", engine_url=f"fake-{i}", missed_heartbeats=1) for i in range(4)])
        session.commit()
    fleet = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=make)
    HealthMonitor(engine, fleet, Settings(heartbeat_timeout=10)).heartbeat()
    with Session(engine) as session:
        assert {node.missed_heartbeats for node in session.exec(select(Node))} == {0}


def test_an_agent_whose_container_is_gone_gets_a_repair_and_the_round_goes_on(engine: Engine) -> None:
    """A running agent that does not answer and has no running container is started again by a `scale` (with an
    `agent.down` event); the round finishes without an error (its log line once read the committed operation's id
    after its session closed: DetachedInstanceError ended the round)."""
    from control_plane.db.models import Tenant
    from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas

    class SilentApi:
        def readyz(self, url: str, token: str, timeout: float) -> Readiness | None:
            return None

    with Session(engine) as session:
        session.add(Node(name="n1", engine_url="fake-n1"))
        session.add(Tenant(name="acme", agents=1))
        session.add(
            Agent(
                id="acme/0", tenant="acme", ordinal=0, generation=1, node="n1", state=AgentState.running,
                url="http://127.0.0.1:9", agent_token="t",
            )
        )  # fmt: skip
        session.commit()
    fleet = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=FakeDriver)
    fleet.agents_api = SilentApi()  # type: ignore[assignment]
    HealthMonitor(engine, fleet, Settings()).probe()  # raises if a repair's future failed
    with Session(engine) as session:
        repairs = session.exec(select(Operation).where(Operation.tenant == "acme")).all()
        downs = session.exec(select(Event).where(Event.kind == "agent.down")).all()
    assert [op.kind for op in repairs] == [OperationKind.scale]
    assert [(event.tenant, event.operation) for event in downs] == [("acme", repairs[0].id)]
