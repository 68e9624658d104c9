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
from sqlmodel import Session

import control_plane.reconciler.runners.move as move_module
from control_plane.db.models import Agent, AgentState, Operation, OperationState
from control_plane.reconciler.pacing import Pacer
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
    assert steps(op) == ["agent.stopped", "agent.started", "agent.removed", "agent.moved"]
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
        "agent.removed",
        "agent.moved",
    ]
    fallback = next(step for step in op.steps if step["step"] == "agent.warm_fallback")
    assert "did not catch up" in fallback["message"] or "not gen 1" in fallback["message"]
    assert op.result["strategy"] == {"acme/0": "cold"}
    assert_converged(world, op.id, running=2)


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
