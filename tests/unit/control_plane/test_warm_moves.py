"""Warm moves on the fakes (control_plane/reconciler/runners/move.py `warm_up`, Fleet.follow/catch_up/promote):
the follower runs before the source stops, CURRENT moves only after the source's proven stop, the promoted
follower is the one container left; a follower that never catches up falls back to cold before anything stops; a
promotion that fails after the stop rolls back; a crash at every port call converges on the warm path too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

import control_plane.reconciler.runners.move as move_module
from agent_image.contract import EXIT_REPLICA_CORRUPT
from control_plane.db.models import (
    Agent,
    AgentState,
    Node,
    NodeState,
    Operation,
    OperationKind,
    OperationState,
    Runtime,
    Tenant,
)
from control_plane.drivers.fake import FakeDriver
from control_plane.reconciler.pacing import Pacer
from tests.unit.control_plane import fakes as crash_fakes
from tests.unit.control_plane import test_crash_operations as crash
from tests.unit.control_plane.test_crash_operations import World, assert_converged, crash_everywhere, provisioned
from tests.unit.control_plane.test_rollback import evacuate, run
from tests.unit.control_plane.test_rollback import run as run_operation


@pytest.fixture(autouse=True)
def _fresh_snapshots() -> Iterator[None]:
    yield
    crash._PROVISIONED.clear()


def steps(op: Operation, agent: int = 0) -> list[str]:
    return [step["step"] for step in op.steps if step.get("agent") == agent]


def agent_row(world: World, ordinal: int = 0) -> Agent:
    with Session(world.engine) as session:
        agent = session.get(Agent, f"acme/{ordinal}")
        assert agent is not None
        return agent


class CurrentSpy:
    """Records, at every CURRENT write, which containers of the agent were running (the fence's order)."""

    def __init__(self, world: World) -> None:
        self.world, self.seen = world, []  # type: list[tuple[int, list[tuple[str, str, int]]]]
        original = world.replicas.advance_current

        def advance(tenant: str, agent: int, generation: int, expected: Any) -> Any:
            self.seen.append((generation, world.engines.containers(tenant, agent)))
            return original(tenant, agent, generation, expected)

        world.replicas.advance_current = advance  # type: ignore[method-assign]


def test_a_warm_evacuation_follows_first_stops_then_promotes(engine: Engine) -> None:
    world = provisioned(engine, agents=2)
    spy = CurrentSpy(world)
    op = run(world, evacuate(world, from_node="n1"))
    assert op.state == OperationState.succeeded, op.error
    assert_converged(world, op.id, running=2)
    moved = agent_row(world)
    assert moved.generation == 2 and moved.node != "n1"
    assert steps(op) == [
        "agent.following",
        "agent.caught_up",
        "agent.stopped",
        "agent.promoted",
        "agent.replicated",
        "agent.removed",
        "agent.moved",
    ]
    assert op.result["strategy"] == {"acme/0": "warm"} and op.result["downtime_s"]["acme/0"] >= 0
    history = [(verb, name) for _, verb, name in world.engines.history]
    assert history.index(("run", "lf-acme-0-g2")) < history.index(("stop", "lf-acme-0-g1")), "follower first"
    # CURRENT moved to 2 only when gen 1 had stopped (its container exited), never while it served
    ((_, containers),) = [(g, c) for g, c in spy.seen if g == 2]
    assert ("fake-n1", "exited", 1) in containers
    # the promotion named the source's proven final txid and delivered the row's own secrets
    container = world.engines.drivers[f"fake-{moved.node}"].containers["lf-acme-0-g2"]
    assert container.promoted_at == world.replicas.read_shutdown("acme", 0, 1)["txid"]  # type: ignore[index]
    assert container.deliveries[-1].agent_token == moved.agent_token
    assert container.deliveries[0].agent_token != moved.agent_token, "the follower held throw-away tokens only"
    # its S3 key was minted once, for the follower, and promoted with it: no `weed shell` inside the downtime
    assert world.credentials.minted.count(("acme", 0, 2)) == 1
    assert moved.access_key == container.deliveries[0].access_key == container.deliveries[-1].access_key


def test_cold_is_selectable_per_operation(engine: Engine) -> None:
    world = provisioned(engine, agents=2)
    op = run(world, evacuate(world, from_node="n1", strategy="cold"))
    assert op.state == OperationState.succeeded, op.error
    assert steps(op) == ["agent.stopped", "agent.started", "agent.replicated", "agent.removed", "agent.moved"]
    assert op.result["strategy"] == {"acme/0": "cold"}
    assert_converged(world, op.id, running=2)


def test_cold_is_selectable_by_the_setting(engine: Engine) -> None:
    world = provisioned(engine, agents=2)
    op = run(world, evacuate(world, from_node="n1"), move_strategy="cold")
    assert op.state == OperationState.succeeded and op.result["strategy"] == {"acme/0": "cold"}


def test_a_follower_that_never_catches_up_falls_back_to_cold_before_anything_stops(engine: Engine) -> None:
    world = provisioned(engine, agents=2)
    for name in ("n2", "n3"):
        world.engines(f"fake-{name}").follower_lag = 10**6
    op = run(world, evacuate(world, from_node="n1"), warm_catchup_timeout=0.3)
    assert op.state == OperationState.succeeded, op.error
    assert steps(op) == [
        "agent.following",
        "agent.removed",  # the follower
        "agent.warm_fallback",
        "agent.stopped",
        "agent.started",
        "agent.replicated",
        "agent.removed",
        "agent.moved",
    ]
    fallback = next(step for step in op.steps if step["step"] == "agent.warm_fallback")
    assert "did not catch up" in fallback["message"] or "not gen 1" in fallback["message"]
    assert op.result["strategy"] == {"acme/0": "cold"}
    assert_converged(world, op.id, running=2)


def test_a_follower_of_a_corrupt_replica_fails_the_move_before_anything_stops(engine: Engine) -> None:
    """The follower's rebuilt copy failed its integrity check (it exits replica_corrupt): a cold move would restore
    the same replica, so nothing is stopped, the follower is removed, the operation fails `replica_corrupt` with a
    line (and event) that says so, and the source serves on."""
    world = provisioned(engine, agents=2)
    for name in ("n2", "n3"):
        driver = world.engines(f"fake-{name}")

        def corrupt(container: str, driver: FakeDriver = driver) -> int | None:
            with driver._lock:  # the follower's restore refused the copy and the follower exited
                driver.containers[container].status = "exited"
                driver.containers[container].exit_code = EXIT_REPLICA_CORRUPT
            return None

        driver.follower_txid = corrupt  # type: ignore[method-assign]
    op = run(world, evacuate(world, from_node="n1"))
    assert op.state == OperationState.failed and op.result["error_code"] == "replica_corrupt", op.error
    assert steps(op) == ["agent.following", "agent.removed", "agent.replica_corrupt"]
    assert [verb for _, verb, _ in world.engines.history if verb == "stop"] == [], "nothing stopped"
    assert "replica fails its integrity check" in (op.error or "")
    assert all(agent_row(world, i).state == AgentState.running for i in (0, 1))
    assert all(agent_row(world, i).generation == 1 for i in (0, 1)), "no generation moved"


def test_a_promotion_that_fails_after_the_stop_rolls_back(engine: Engine) -> None:
    world = provisioned(engine, agents=2)
    for name in ("n2", "n3"):
        world.engines(f"fake-{name}").refuse_promotion = True
    op = run(world, evacuate(world, from_node="n1"))
    assert op.state == OperationState.failed and op.error is not None and "rolled back" in op.error
    assert "agent.rolled_back" in steps(op)
    agent = agent_row(world)
    assert (agent.generation, agent.node, agent.state) == (1, "n1", AgentState.running)
    assert world.engines.containers("acme", 0) == [("fake-n1", "running", 1)], "the follower is gone"
    current = world.replicas.read_current("acme", 0)
    assert current is not None and current.generation == 1, "CURRENT given back"
    assert ("acme", 0, 2) not in world.credentials.issued, "the follower's key is revoked"


def test_a_warm_evacuation_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=2)
        return world, evacuate(world, from_node="n1", strategy="warm")

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=2)
        with Session(world.engine) as session:
            row = session.get(Operation, op)
            assert row is not None and row.result["strategy"] == {"acme/0": "warm"}
            assert "agent.promoted" in [step["step"] for step in row.steps]

    assert crash_everywhere(engine, setup, check) > 20


def test_a_warm_fallback_converges_after_a_crash_at_every_point(engine: Engine) -> None:
    def setup(engine: Engine) -> tuple[World, str]:
        world = provisioned(engine, agents=1)
        for name in ("n2", "n3"):
            world.engines(f"fake-{name}").follower_lag = 10**6
        return world, evacuate(world, from_node="n1", strategy="warm")

    def check(world: World, op: str) -> None:
        assert_converged(world, op, running=1)

    original = crash.World.fleet

    def quick(self: World, crasher: Any = None) -> Any:
        fleet = original(self, crasher)
        fleet.settings = fleet.settings.model_copy(update={"warm_catchup_timeout": 0.2})
        return fleet

    crash.World.fleet = quick  # type: ignore[method-assign]
    try:
        crash_everywhere(engine, setup, check)
    finally:
        crash.World.fleet = original  # type: ignore[method-assign]


def test_only_the_cutover_holds_the_destination_s_slot(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node with one cutover slot (runners/move.py, pacing.py): while one agent's cutover holds it, the next
    agent's follower already restores and catches up there; the next cutover (its source's stop) begins only after
    the first promotion."""
    world = provisioned(engine, agents=2)
    monkeypatch.setattr(move_module, "PACER", Pacer(fast=0.0))  # slots never grow: one cutover at a time
    n3 = world.engines("fake-n3")
    started: list[str] = []
    second_follower = threading.Event()
    waited: list[bool] = []
    run_on_n3, promote_on_n3 = n3.run, n3.promote

    def run(spec: Any) -> Any:
        started.append(spec.name)
        if len(started) == 2:
            second_follower.set()
        return run_on_n3(spec)

    def promote(name: str, *args: Any, **kwargs: Any) -> Any:
        waited.append(second_follower.wait(5))  # the first cutover holds the slot until the second follower runs
        promoted = promote_on_n3(name, *args, **kwargs)
        world.engines.history.append(("fake-n3", "promote", name))
        return promoted

    monkeypatch.setattr(n3, "run", run)
    monkeypatch.setattr(n3, "promote", promote)
    op = run_operation(world, evacuate(world, to_node="n3", max_unavailable=2), move_parallelism=2)
    assert op.state == OperationState.succeeded, op.error
    assert waited[0], "the second follower could not start while the first cutover held the slot"
    history = [(verb, name) for _, verb, name in world.engines.history]
    cutovers = sorted(
        (history.index(("stop", f"lf-acme-{i}-g1")), history.index(("promote", f"lf-acme-{i}-g2"))) for i in (0, 1)
    )
    assert cutovers[0][1] < cutovers[1][0], f"the cutovers overlapped on one slot: {history}"


class FirstReplicaHeld:
    """Plays a promoted gen 2 whose first snapshot is slow: its replica stays empty until the agent's row says
    `running` (the router sends it requests), and records whether that happened before the replica existed. With
    `crash`, the control plane dies (kill -9) at that moment instead, the replica still empty."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch, *, crash: bool = False) -> None:
        self.world, self.crash, self.routed_before_replica = world, crash, False
        for driver in [world.engines(f"fake-{name}") for name in ("n1", "n2", "n3")]:
            driver._on_run = self._started  # type: ignore[attr-defined]
        original = crash_fakes.FakeAgents.readyz

        def readyz(agents: Any, url: str, token: str, timeout: float = 2.0) -> Any:
            if ("acme", 0, 2) in self.held and self._routed():
                self.routed_before_replica = True
                if self.crash:
                    self.crash = False
                    raise crash_fakes.Crash("killed between the router switch and the first replica")
                world.replicas.txids[("acme", 0, 2)] = self.held.pop(("acme", 0, 2))
            return original(agents, url, token, timeout)

        monkeypatch.setattr(crash_fakes.FakeAgents, "readyz", readyz)
        self.held: dict[tuple[str, int, int], int] = {}

    def _started(self, spec: Any) -> None:
        self.world.replicas.agent_started(spec)
        own = (spec.tenant, spec.agent, spec.generation)
        if own == ("acme", 0, 2) and own not in self.held:
            self.held[own] = self.world.replicas.txids.pop(own)

    def _routed(self) -> bool:
        row = agent_row(self.world)
        return row.generation == 2 and row.state == AgentState.running and row.url is not None


@pytest.mark.parametrize("strategy", ["warm", "cold"])
def test_a_move_routes_on_ready_and_finishes_after_the_first_replica(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    world = provisioned(engine, agents=1)
    held = FirstReplicaHeld(world, monkeypatch)
    op = run(world, evacuate(world, from_node="n1", strategy=strategy))
    assert op.state == OperationState.succeeded, op.error
    assert held.routed_before_replica, "the router switched while gen 2's replica was still empty"
    names = steps(op)
    assert names.index("agent.replicated") < names.index("agent.removed"), "the source goes only after it"
    assert op.result["downtime_s"]["acme/0"] >= 0
    assert_converged(world, op.id, running=1)


def test_a_crash_between_the_router_switch_and_the_first_replica_converges(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = provisioned(engine, agents=1)
    held = FirstReplicaHeld(world, monkeypatch, crash=True)
    op_id = evacuate(world, from_node="n1", strategy="warm")
    with pytest.raises(crash_fakes.Crash):
        world.run(op_id)
    # the new generation serves, the source's container and volume are still there (stopped)
    assert agent_row(world).state == AgentState.running
    assert ("fake-n1", "exited", 1) in world.engines.containers("acme", 0)
    world.run(op_id)
    assert held.routed_before_replica
    assert_converged(world, op_id, running=1)
    with Session(world.engine) as session:
        op = session.get(Operation, op_id)
        assert op is not None
        names = steps(op)
    assert "agent.rolling_back" not in names, "never rolled back past a generation that served"
    assert names.count("agent.promoted") == 1, "the re-run only waited for the replica"
    assert world.replicas.txids[("acme", 0, 2)] >= 1


def test_a_follower_has_a_memory_allowance_until_it_is_promoted(engine: Engine) -> None:
    world = provisioned(engine, agents=1)
    op = run(world, evacuate(world, from_node="n1", strategy="warm"), warm_follower_memory_mb=512)
    assert op.state == OperationState.succeeded, op.error
    moved = agent_row(world)
    container = world.engines.drivers[f"fake-{moved.node}"].containers["lf-acme-0-g2"]
    assert container.spec.container_memory_mb == container.spec.memory_mb + 512, "created with the allowance"
    assert container.memory_mb == container.spec.memory_mb, "lowered to the agent's limit after the promotion"
    serving = container.spec.environment()["LITEFLEET_SERVING_MEMORY_MB"]
    assert serving == str(container.spec.memory_mb), "the follower serves only once its cgroup shows this limit"


def test_a_follower_whose_allowance_cannot_be_lowered_never_serves_and_the_move_rolls_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: tenant code never keeps the follower's extra memory; the source serves again."""
    world = provisioned(engine, agents=1)

    def refuse(self: Any, name: str, memory_mb: int) -> bool:
        raise RuntimeError("the kernel cannot reclaim that much")

    monkeypatch.setattr(FakeDriver, "limit_memory", refuse)
    op = run(world, evacuate(world, from_node="n1", strategy="warm"), warm_follower_memory_mb=512)
    assert op.state == OperationState.failed and op.error is not None and "rolled back" in op.error
    assert "memory allowance could not be lowered" in op.error
    agent = agent_row(world)
    assert (agent.generation, agent.node, agent.state) == (1, "n1", AgentState.running)
    assert world.engines.containers("acme", 0) == [("fake-n1", "running", 1)], "the promoted follower is gone"


def test_a_runsc_follower_has_no_allowance_as_its_limit_cannot_be_lowered_and_the_move_succeeds(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runsc has no `update`: a follower starts at its agent's limit and nothing asks to lower it."""
    world = provisioned(engine, agents=1)
    with Session(world.engine) as session:
        tenant = session.get(Tenant, "acme")
        assert tenant is not None
        tenant.runtime = Runtime.runsc
        session.add(tenant)
        for node in session.exec(select(Node)).all():
            node.runtimes = ["runc", "runsc"]
            session.add(node)
        session.commit()

    def refuse(self: Any, name: str, memory_mb: int) -> bool:
        raise RuntimeError("runsc: unknown subcommand update")

    monkeypatch.setattr(FakeDriver, "limit_memory", refuse)
    op = run(world, evacuate(world, from_node="n1", strategy="warm"), warm_follower_memory_mb=512)
    assert op.state == OperationState.succeeded, op.error
    moved = agent_row(world)
    container = world.engines.drivers[f"fake-{moved.node}"].containers["lf-acme-0-g2"]
    assert container.spec.runtime == "runsc" and container.spec.follow
    assert container.spec.container_memory_mb == container.spec.memory_mb, "no allowance it could not give back"
    assert "LITEFLEET_SERVING_MEMORY_MB" not in container.spec.environment(), "nothing to wait for"


def test_a_fail_over_before_the_first_replica_restores_the_predecessor_s_proven_replica(engine: Engine) -> None:
    world = provisioned(engine, agents=1)
    op = run(world, evacuate(world, from_node="n1", to_node="n2", strategy="warm"))
    assert op.state == OperationState.succeeded, op.error
    proven = world.replicas.txids[("acme", 0, 1)]
    del world.replicas.txids[("acme", 0, 2)]  # as if n2 went before gen 2's first snapshot reached the store
    world.engines.drivers["fake-n2"].reachable = False
    with Session(engine) as session:
        node = session.get(Node, "n2")
        assert node is not None
        node.state = NodeState.down
        session.add(node)
        failover = Operation(kind=OperationKind.failover, node="n2", params={"declared_down_at": 1.0})
        session.add(failover)
        session.commit()
        failover_id = failover.id
    done = run(world, failover_id)
    assert done.state == OperationState.succeeded, done.error
    assert "agent.restore_source" in steps(done)
    moved = agent_row(world)
    assert moved.generation == 3 and moved.state == AgentState.running
    container = world.engines.drivers[f"fake-{moved.node}"].containers["lf-acme-0-g3"]
    assert container.spec.restore_from_url is not None and container.spec.restore_from_url.endswith("/gen-1/")
    assert world.replicas.txids[("acme", 0, 3)] == proven + 1, "gen 3 holds everything gen 1 proved"
    assert done.result["loss"]["acme/0"]["last_replicated_txid"] == proven
