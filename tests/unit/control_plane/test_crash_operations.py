"""Every operation kind, killed at every point: at each call the control plane makes to an engine, object storage
or an agent (before the call, and after it took effect) the process dies (as kill -9: nothing more happens),
its lease runs out, and the operation runs again from the top. Afterwards the fleet must have converged:

- the operation succeeded;
- each running agent has exactly one container, running, of the generation its row names, on its row's node,
  and CURRENT names that generation;
- a retained (or deleted) agent has no container left on any reachable engine.

On SQLite, and on PostgreSQL when LITEFLEET_TEST_DATABASE_URL is set (the `engine` fixture)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from control_plane.db.models import (
    Agent,
    AgentState,
    EvacuateRequest,
    Node,
    NodeState,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
    TenantCreate,
)
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.claims import claim
from control_plane.reconciler.health import HealthMonitor
from control_plane.reconciler.runners import runners
from control_plane.reconciler.worker import Reconciler
from control_plane.services import nodes as node_services
from control_plane.services import tenants
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import Crash, Crasher, FakeAgents, FakeCredentials, FakeEngines, FakeReplicas

NODES = ("n1", "n2", "n3")


@dataclass
class World:
    engine: Engine
    replicas: FakeReplicas
    credentials: FakeCredentials
    engines: FakeEngines

    def fleet(self, crasher: Crasher | None = None) -> Fleet:
        wrap: Callable[[object], object] = crasher.wrap if crasher else (lambda port: port)
        return Fleet(
            self.engine,
            Settings(
                move_parallelism=2, ready_timeout=5, drain_timeout=1, agent_lease_timeout=0.05, agent_lease_margin=0
            ),
            storage=wrap(self.replicas),  # type: ignore[arg-type]
            credentials=wrap(self.credentials),  # type: ignore[arg-type]
            make_driver=wrap(self.engines),  # type: ignore[arg-type]
            agents_api=wrap(FakeAgents(self.engines)),  # type: ignore[arg-type]
        )

    def run(self, op_id: str, crasher: Crasher | None = None) -> None:
        """Claim the operation (its earlier owner's lease has run out) and run it; Crash escapes when it dies."""
        with Session(self.engine) as session:
            session.execute(update(Operation).where(col(Operation.id) == op_id).values(locked_until=0.0))
            session.commit()
        claimed = claim(self.engine, lease=30)
        assert claimed is not None and claimed[0].id == op_id
        fleet = self.fleet(crasher)
        Reconciler(self.engine, runners(fleet), workers=0, lease=30).run(*claimed)

    def queue(self, make: Callable[[Session], Operation]) -> str:
        with Session(self.engine) as session:
            return make(session).id


@pytest.fixture(autouse=True)
def _no_fsync(engine: Engine) -> Iterator[None]:
    """These tests kill the process, not the machine: SQLite need not wait for the disk at every commit."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA synchronous=OFF"))
        engine.dispose()
    yield
    _PROVISIONED.clear()


def new_world(engine: Engine) -> World:
    with Session(engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(table.delete())
        for name in NODES:
            session.add(Node(name=name, engine_url=f"fake-{name}", capacity_agents=4))
        session.commit()
    replicas = FakeReplicas()
    return World(engine, replicas, FakeCredentials(), FakeEngines(replicas))


_PROVISIONED: dict[tuple[str, int], tuple[dict[str, list[dict[str, Any]]], World]] = {}


def provisioned(engine: Engine, agents: int = 2) -> World:
    """A fleet where acme runs `agents` agents: provisioned once per test, then restored from a snapshot (the
    rows and the fakes' state) for every crash point, which costs a fraction of provisioning again."""
    key = (str(engine.url), agents)
    if key not in _PROVISIONED:
        world = new_world(engine)
        op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=agents)))
        world.run(op)
        assert_converged(world, op, running=agents)
        with engine.connect() as connection:
            rows = {
                table.name: [dict(row) for row in connection.execute(table.select()).mappings()]
                for table in SQLModel.metadata.sorted_tables
            }
        _PROVISIONED[key] = rows, world
    rows, world = _PROVISIONED[key]
    with Session(engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(table.delete())
        for table in SQLModel.metadata.sorted_tables:
            if rows[table.name]:
                session.execute(table.insert(), rows[table.name])
        session.commit()
    replicas = world.replicas.copy()
    return World(engine, replicas, world.credentials.copy(), world.engines.copy(replicas))


def assert_converged(world: World, op_id: str, running: int, *, tenant_exists: bool = True) -> None:
    with Session(world.engine) as session:
        op = session.get(Operation, op_id)
        assert op is not None
        assert op.state == OperationState.succeeded, (op.error, op.steps[-3:])
        agents = list(session.exec(select(Agent).where(Agent.tenant == "acme")).all())
        assert (session.get(Tenant, "acme") is not None) == tenant_exists
    placed = sorted(a.ordinal for a in agents if a.state == AgentState.running)
    assert placed == list(range(running))
    for agent in agents:
        containers = world.engines.containers("acme", agent.ordinal)
        if agent.state == AgentState.running:
            assert containers == [(f"fake-{agent.node}", "running", agent.generation)], agent
            current = world.replicas.read_current("acme", agent.ordinal)
            assert current is not None and current.generation == agent.generation
        else:
            assert agent.state == AgentState.retained and containers == [], agent
    if not tenant_exists:
        assert agents == [] and all(not world.engines.containers("acme", i) for i in range(4))


def crash_everywhere(
    engine: Engine, setup: Callable[[Engine], tuple[World, str]], check: Callable[[World, str], None]
) -> int:
    """Kill at crash point 1, 2, ... until a run passes every point; after each kill re-run and `check`.
    Returns how many points were tried."""
    point = 0
    while True:
        point += 1
        world, op_id = setup(engine)
        crasher = Crasher(crash_at=point)
        try:
            world.run(op_id, crasher)
        except Crash:
            world.run(op_id)
            check(world, op_id)
            continue
        check(world, op_id)
        return point


def test_provision_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = new_world(engine)
        return world, world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=2)))

    assert crash_everywhere(engine, setup, lambda world, op: assert_converged(world, op, running=2)) > 10


def test_scale_up_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=1)
        return world, world.queue(lambda s: tenants.scale_tenant(s, "acme", 2))

    crash_everywhere(engine, setup, lambda world, op: assert_converged(world, op, running=2))


def test_scale_down_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=2)
        return world, world.queue(lambda s: tenants.scale_tenant(s, "acme", 1))

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=1)
        record = world.replicas.read_shutdown("acme", 1, 1)
        assert record is not None and (record["proven"], record["txid"]) == (True, 1), "the replica is kept"

    crash_everywhere(engine, setup, check)


def test_evacuate_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=2)
        return world, world.queue(lambda s: tenants.evacuate_tenant(s, "acme", EvacuateRequest(from_node="n1")))

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=2)
        with Session(world.engine) as session:
            moved = session.get(Agent, "acme/0")
            assert moved is not None and moved.node != "n1" and moved.generation == 2
            operation = session.get(Operation, op)
            assert operation is not None and set(operation.result["downtime_s"]) == {"acme/0"}

    crash_everywhere(engine, setup, check)


def test_drain_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=2)
        return world, world.queue(lambda s: node_services.drain_node(s, "n1"))

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=2)
        with Session(world.engine) as session:
            assert [a.node for a in session.exec(select(Agent)).all()].count("n1") == 0
            node = session.get(Node, "n1")
            assert node is not None and node.state == NodeState.cordoned

    crash_everywhere(engine, setup, check)


def test_failover_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=2)
        world.engines.drivers["fake-n1"].reachable = False
        with Session(engine) as session:
            node = session.get(Node, "n1")
            assert node is not None
            node.state = NodeState.down
            session.add(node)
            op = Operation(kind=OperationKind.failover, node="n1", params={"declared_down_at": 1.0})
            session.add(op)
            session.commit()
            return world, op.id

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=2)
        with Session(world.engine) as session:
            moved = session.get(Agent, "acme/0")
            assert moved is not None and moved.node != "n1" and moved.generation == 2
        assert ("acme", 0, 1) not in world.credentials.issued, "the lost incarnation's key is revoked"
        with Session(world.engine) as session:
            row = session.get(Operation, op)
            agents = session.exec(select(Agent)).all()
            tenant = session.get(Tenant, "acme")
            assert row is not None and tenant is not None and tenant.admin_token
            for agent in agents:  # each incarnation got the tokens its row holds; one admin token per tenant
                assert agent.admin_token == tenant.admin_token and agent.agent_token != tenant.admin_token
                assert agent.node is not None
                container = world.engines.drivers[f"fake-{agent.node}"].containers[
                    f"lf-acme-{agent.ordinal}-g{agent.generation}"
                ]
                assert container.deliveries[-1].agent_token == agent.agent_token
            # invariant 6: a new generation starts only after the old one's lease ran out from CURRENT's move
            waited = [step for step in row.steps if step["step"] == "agent.lease_waited"]
            started = [step for step in row.steps if step["step"] == "agent.started"]
            assert waited and started
            for step in started:
                first_wait = min(w["not_before"] for w in waited if w["agent"] == step["agent"])
                assert step["at"] >= first_wait
            # the loss report, measured once before anything changed, survives every re-run
            for agent_id, loss in row.result["loss"].items():
                assert loss["last_replicated_txid"] == row.result["restored_txid"][agent_id] >= 1
                assert "may be lost" in loss["statement"] and "lost_txids_at_least" not in loss

    crash_everywhere(engine, setup, check)


@pytest.mark.parametrize("purge", [False, True])
def test_delete_converges_after_a_crash_at_every_point(engine: Engine, purge: bool) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=2)
        return world, world.queue(lambda s: tenants.delete_tenant(s, "acme", purge))

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=0, tenant_exists=False)
        assert bool(world.replicas.txids) != purge

    crash_everywhere(engine, setup, check)


def test_the_health_monitor_queues_stale_containers_and_a_cleanup_removes_them(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=1)
        driver = world.engines.drivers["fake-n1"]
        leftover = replace(driver.containers["lf-acme-0-g1"], status="exited", exit_code=0)
        driver.containers["lf-acme-0-g0"] = replace(leftover, spec=replace(leftover.spec, generation=0))
        HealthMonitor(engine, world.fleet(), Settings()).beat()
        assert "lf-acme-0-g0" in driver.containers, "the monitor only queues the removal"
        with Session(engine) as session:
            (op,) = session.exec(select(Operation).where(Operation.kind == OperationKind.cleanup)).all()
            assert (op.tenant, op.node, op.params) == ("acme", "n1", {"found": ["lf-acme-0-g0"]})
            return world, op.id

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=1)
        assert sorted(world.engines.drivers["fake-n1"].containers) == ["lf-acme-0-g1"]

    crash_everywhere(engine, setup, check)
