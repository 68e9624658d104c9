"""The warm pool in the control plane, on the fakes: the refill keeps each ready node at `warm_pool_size` (and
removes stopped, outdated and surplus members) under a lease on the node's row; a provision and a scale-up claim a
pool container for each new agent and fall back to a cold start when none is ready; a restore never claims; the pool's
memory counts in capacity and `GET /v1/nodes` shows size and ready count. Against real Docker:
tests/integration/test_pool.py."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import AgentState, Node, Operation, TenantCreate
from control_plane.drivers.agent_spec import AgentSpec, PoolSpec
from control_plane.drivers.fake import FakeDriver
from control_plane.errors import NoCapacityError
from control_plane.fleet.incarnations import Fleet
from control_plane.fleet.placement import node_loads
from control_plane.reconciler.pool import PoolRefiller, claim_node, finish_node
from control_plane.services import nodes as node_services
from control_plane.services import tenants
from control_plane.settings import Settings
from control_plane.storage.credentials import TenantCredentials
from tests.unit.control_plane.test_crash_operations import NODES, World, assert_converged, new_world


def pooled(world: World, size: int = 2) -> Fleet:
    fleet = world.fleet()
    fleet.settings = Settings(**{**fleet.settings.model_dump(), "warm_pool_size": size})
    return fleet


def driver(world: World, node: str) -> FakeDriver:
    return world.engines(f"fake-{node}")


def refill_all(fleet: Fleet) -> None:
    PoolRefiller(fleet).tick()


def run_with(world: World, fleet: Fleet, op_id: str) -> None:
    world.fleet = lambda crasher=None: fleet  # type: ignore[method-assign]
    world.run(op_id)


def test_the_refill_fills_each_ready_node_and_records_it(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=2)
    refill_all(fleet)
    for name in NODES:
        assert [m.ready for m in driver(world, name).list_pool(fleet.storage.bucket)] == [True, True]
    refill_all(fleet)  # again: nothing more
    assert sum(len(driver(world, name).pool) for name in NODES) == 6
    with Session(engine) as session:
        public = node_services.get_node(session, "n1")
    assert (public.pool_size, public.pool_ready) == (2, 2)
    assert "pool_lock_token" not in public.model_dump()


def test_the_refill_replaces_stopped_and_outdated_members_and_trims_surplus(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=2)
    one = driver(world, "n1")
    bucket = fleet.storage.bucket
    stopped = one.start_pool(PoolSpec(image=fleet.settings.image, fleet=bucket))
    one.pool[stopped.name] = (one.pool[stopped.name][0], "exited")
    old = one.start_pool(PoolSpec(image="litefleet/agent:old", fleet=bucket))
    for _ in range(3):
        one.start_pool(PoolSpec(image=fleet.settings.image, fleet=bucket))
    other_fleet = one.start_pool(PoolSpec(image=fleet.settings.image, fleet="another-fleet"))
    refill_all(fleet)
    members = one.list_pool(bucket)
    assert len(members) == 2 and all(m.ready and m.image == fleet.settings.image for m in members)
    assert stopped.name not in one.pool and old.name not in one.pool
    assert other_fleet.name in one.pool  # another control plane's pool is not ours to touch


def test_a_node_under_another_control_planes_lease_is_left_alone(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=1)
    token = claim_node(engine, "n1", lease=60)
    assert token is not None and claim_node(engine, "n1", lease=60) is None
    assert PoolRefiller(fleet).refill(fleet.node("n1")) is None
    assert driver(world, "n1").pool == {}
    assert finish_node(engine, "n1", token, size=1, ready=0, memory_mb=256)
    assert not finish_node(engine, "n1", token, size=1, ready=0, memory_mb=256)  # the token is spent
    assert PoolRefiller(fleet).refill(fleet.node("n1")) == 1


def test_a_provision_claims_pool_containers_and_falls_back_to_cold(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=1)
    refill_all(fleet)
    op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=4)))
    run_with(world, fleet, op)
    assert_converged(world, op, running=4)
    started = [c for name in NODES for c in driver(world, name).containers.values()]
    claimed = [c for c in started if c.claimed_from is not None]
    assert len(claimed) == 3 and len(started) == 4  # one pool container per node, the 4th agent started cold
    assert [len(c.deliveries) for c in started] == [1, 1, 1, 1]  # the claim delivered them, nothing again
    assert all(driver(world, name).pool == {} for name in NODES)
    with Session(engine) as session:
        operation = session.get(Operation, op)
        assert operation is not None
        assert [s["step"] for s in operation.steps].count("agent.claimed") == 3
    refill_all(fleet)  # the pool refills behind the claims
    assert all(len(driver(world, name).pool) == 1 for name in NODES)


def test_a_scale_up_that_restores_never_claims(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=1)
    op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=2)))
    run_with(world, fleet, op)
    down = world.queue(lambda s: tenants.scale_tenant(s, "acme", 1))
    run_with(world, fleet, down)
    refill_all(fleet)
    up = world.queue(lambda s: tenants.scale_tenant(s, "acme", 2))
    run_with(world, fleet, up)
    assert_converged(world, up, running=2)
    restored = [
        c for name in NODES for c in driver(world, name).containers.values() if c.spec.restore_from_url is not None
    ]
    assert len(restored) == 1 and restored[0].claimed_from is None
    assert all(len(driver(world, name).pool) == 1 for name in NODES)  # nothing was taken from the pools


def test_the_pools_memory_counts_in_capacity(engine: Engine) -> None:
    world = new_world(engine)
    with Session(engine) as session:
        for name in NODES:
            node = session.get(Node, name)
            assert node is not None
            node.capacity_memory_mb = 1024
            session.add(node)
        session.commit()
    fleet = pooled(world, size=2)
    refill_all(fleet)
    with Session(engine) as session:
        assert {load.memory_mb for load in node_loads(session, "acme").values()} == {2 * 256}
    op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=3, memory_mb=256)))
    run_with(world, fleet, op)
    assert_converged(world, op, running=3)
    # 1024 MiB - 2 x 256 of pool - one 256 MiB agent: 256 free on each node, where 768 would be free without the pool
    with Session(engine) as session, pytest.raises(NoCapacityError, match="256 MiB free, needs 512"):
        tenants.create_tenant(session, TenantCreate(name="big", agents=1, memory_mb=512))


def test_a_claim_the_driver_refuses_starts_cold(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=1)
    refill_all(fleet)
    for name in NODES:  # the pool holds another image: claims are refused, nothing waits on them
        one = driver(world, name)
        one.pool = {k: (dataclasses.replace(spec, image="other:1"), status) for k, (spec, status) in one.pool.items()}
    op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=1)))
    run_with(world, fleet, op)
    assert_converged(world, op, running=1)
    started = [c for name in NODES for c in driver(world, name).containers.values()]
    assert [c.claimed_from for c in started] == [None]


def test_a_pool_no_longer_wanted_is_emptied_once(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    world = new_world(engine)
    refill_all(pooled(world, size=2))
    assert all(len(driver(world, name).pool) == 2 for name in NODES)
    refill_all(pooled(world, size=0))
    assert all(driver(world, name).pool == {} for name in NODES)
    with Session(engine) as session:
        assert {(n.pool_size, n.pool_ready) for n in (session.get(Node, name) for name in NODES) if n} == {(0, 0)}
    touched: list[str] = []
    monkeypatch.setattr("control_plane.reconciler.pool.claim_node", lambda engine, name, lease: touched.append(name))
    refill_all(pooled(world, size=0))
    assert touched == []  # the next rounds touch no node: nothing is recorded there any more


def test_a_node_with_an_agent_starting_is_refilled_after_it(engine: Engine) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=1)
    fleet.set_agent("acme", 0, generation=1, node="n1", state=AgentState.starting)
    refill_all(fleet)
    assert driver(world, "n1").pool == {} and len(driver(world, "n2").pool) == 1
    fleet.set_agent("acme", 0, state=AgentState.running)
    refill_all(fleet)
    assert len(driver(world, "n1").pool) == 1


def test_a_claim_takes_the_key_last_after_current_moved_and_holds_the_recorded_secrets(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key mint, CURRENT and the agent row run beside the claim's network move; the container gets its identity
    only after them: CURRENT names its generation and the secrets it gets are the ones recorded on its row."""
    world = new_world(engine)
    fleet = pooled(world, size=1)
    refill_all(fleet)
    seen: list[tuple[int | None, bool]] = []
    claim = FakeDriver.claim

    def spying(self: FakeDriver, name: str, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Any:
        assert complete is not None and spec.credentials.secret_key == "" and spec.agent_token == ""

        def watched() -> AgentSpec:
            full = complete()
            current = fleet.storage.read_current(spec.tenant, spec.agent)
            seen.append(
                (None if current is None else current.generation, (spec.tenant, 0, 1) in world.credentials.issued)
            )
            return full

        return claim(self, name, spec, watched)

    monkeypatch.setattr(FakeDriver, "claim", spying)
    op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=1)))
    run_with(world, fleet, op)
    assert_converged(world, op, running=1)
    assert seen == [(1, True)]
    (container,) = [c for name in NODES for c in driver(world, name).containers.values()]
    agent = fleet.agent("acme", 0)
    (delivered,) = container.deliveries
    assert container.claimed_from is not None and delivered.agent_token == agent.agent_token
    assert (delivered.access_key, delivered.secret_key) == (agent.access_key, agent.secret_key)
    assert delivered.admin_token and delivered.secret_key


def test_a_failed_key_mint_during_a_claim_leaves_no_half_claimed_container_and_a_rerun_converges(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = new_world(engine)
    fleet = pooled(world, size=1)
    refill_all(fleet)
    issue = world.credentials.issue_incarnation
    calls = []

    def failing_once(tenant: str, agent: int, generation: int) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the store's shell did not answer")
        return issue(tenant, agent, generation)

    monkeypatch.setattr(world.credentials, "issue_incarnation", failing_once)
    op = world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="acme", agents=1)))
    run_with(world, fleet, op)
    assert all(driver(world, name).containers == {} for name in NODES)  # the taken pool container held nothing
    assert sum(len(driver(world, name).pool) for name in NODES) == len(NODES) - 1
    again = world.queue(lambda s: tenants.scale_tenant(s, "acme", 1))
    run_with(world, fleet, again)
    assert_converged(world, again, running=1)


def _spec(tenant: str) -> AgentSpec:
    return AgentSpec(
        tenant=tenant,
        agent=0,
        generation=1,
        bundle="tenants.hello",
        image="litefleet/agent:test",
        replica_url=f"s3://lf/{tenant}",
        s3_endpoint="http://127.0.0.1:1",
        credentials=TenantCredentials(tenant, "key", "secret"),
        agent_token="token",
        admin_token="admin",
        fleet="lf",
    )


def test_two_starts_on_one_node_never_work_on_the_same_pool_container() -> None:
    """Two new agents claim at once on a node with two pool containers: each works on its own (the real engine
    would let the second's rename take the first's container), and both are claimed."""
    from control_plane.fleet import pool

    driver = FakeDriver("fake-0")
    for _ in range(2):
        driver.start_pool(PoolSpec(image="litefleet/agent:test", fleet="lf"))
    both_claiming = threading.Barrier(2, timeout=5)
    worked_on: list[str] = []
    real_claim = driver.claim

    def claim(name: str, spec: AgentSpec, complete: Any = None) -> Any:
        worked_on.append(name)
        both_claiming.wait()
        return real_claim(name, spec, complete)

    driver.claim = claim  # type: ignore[method-assign]
    specs = [_spec(f"t{i}") for i in range(2)]
    with ThreadPoolExecutor(2) as beside:
        claimed = list(beside.map(lambda spec: pool.claim(driver, spec), specs))
    assert all(incarnation is not None for incarnation in claimed)
    assert sorted(worked_on) == sorted({*worked_on}) and len(worked_on) == 2
