"""No operation leaves a tenant down (DESIGN invariant 7), decided with the fakes: preflight refusals stop nothing,
a move that fails after it stopped an agent puts the old incarnation back (a failure injected at every call it
makes), rolling moves never take more than `max_unavailable` of a tenant down (read from the engines' history),
a retry after the fault clears converges, stuck agents are repaired or escalated, and a stopping reconciler
hands its operations back at once."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import (
    Agent,
    AgentState,
    EvacuateRequest,
    Event,
    Node,
    NodeState,
    Operation,
    OperationKind,
    OperationState,
    TenantCreate,
)
from control_plane.drivers.base import EngineUnreachable
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler import OpContext, Reconciler, claim
from control_plane.reconciler.runners import runners
from control_plane.reconciler.stuck import Finding, sweep
from control_plane.services import nodes as node_services
from control_plane.services import tenants
from control_plane.settings import Settings
from tests.unit.control_plane import test_crash_operations as crash
from tests.unit.control_plane.fakes import FakeAgents, StoreFrozen
from tests.unit.control_plane.test_crash_operations import World, provisioned

FAST = {
    "move_parallelism": 4,
    "ready_timeout": 2,
    "drain_timeout": 1,
    "agent_lease_timeout": 0.05,
    "agent_lease_margin": 0,
    "preflight_timeout": 0.5,
    "rollback_timeout": 2,
}


@pytest.fixture(autouse=True)
def _fresh_snapshots() -> Iterator[None]:
    yield
    crash._PROVISIONED.clear()


class Faulty:
    """Wraps the fleet's ports (store, credentials, engines) and makes call number `at` fail once, as the real
    part would (the store: an exception, as boto3's timeout; an engine: EngineUnreachable). `armed` starts the
    count (after provisioning)."""

    def __init__(self, at: int | None) -> None:
        self.at, self.calls, self.fired = at, 0, False
        self._lock = threading.Lock()

    def _point(self, error: Exception) -> None:
        with self._lock:
            self.calls += 1
            if self.calls == self.at:
                self.fired = True
                raise error

    def wrap(self, target: Any, error: Exception) -> Any:
        faulty = self

        class Wrapped:
            def __getattr__(self, name: str) -> Any:
                value = getattr(target, name)
                if not callable(value):
                    return value

                def call(*args: Any, **kwargs: Any) -> Any:
                    faulty._point(error)
                    return value(*args, **kwargs)

                return call

            def __call__(self, url: str) -> Any:
                return faulty.wrap(target(url), EngineUnreachable(f"injected: {url} does not answer"))

        return Wrapped()


def fleet(world: World, faulty: Faulty | None = None, **settings: Any) -> Fleet:
    wrap = (lambda port, error: faulty.wrap(port, error)) if faulty else (lambda port, error: port)
    return Fleet(
        world.engine,
        Settings(**{**FAST, **settings}),
        storage=wrap(world.replicas, StoreFrozen("injected: store read timed out")),
        credentials=wrap(world.credentials, StoreFrozen("injected: store read timed out")),
        make_driver=wrap(world.engines, None),
        agents_api=FakeAgents(world.engines),
    )


def run(world: World, op_id: str, faulty: Faulty | None = None, **settings: Any) -> Operation:
    claimed = claim(world.engine, lease=30)
    assert claimed is not None and claimed[0].id == op_id
    Reconciler(world.engine, runners(fleet(world, faulty, **settings)), workers=0, lease=30).run(*claimed)
    with Session(world.engine) as session:
        op = session.get(Operation, op_id)
        assert op is not None
        return op


def evacuate(world: World, **body: Any) -> str:
    return world.queue(lambda s: tenants.evacuate_tenant(s, "acme", EvacuateRequest(**body)))


def agents(world: World, tenant: str = "acme") -> list[Agent]:
    with Session(world.engine) as session:
        return list(session.exec(select(Agent).where(Agent.tenant == tenant).order_by(col(Agent.ordinal))).all())


def assert_serving(world: World, count: int) -> None:
    """Every agent runs: one running container each, of its row's generation on its row's node, named by
    CURRENT; no other container of the tenant runs anywhere."""
    rows = agents(world)
    assert [(a.ordinal, a.state) for a in rows] == [(i, AgentState.running) for i in range(count)], rows
    for agent in rows:
        running = [c for c in world.engines.containers("acme", agent.ordinal) if c[1] == "running"]
        assert running == [(f"fake-{agent.node}", "running", agent.generation)], (agent, running)
        current = world.replicas.read_current("acme", agent.ordinal)
        assert current is not None and current.generation == agent.generation


def stops(world: World) -> list[str]:
    return [name for _, verb, name in world.engines.history if verb == "stop"]


def most_down_at_once(world: World) -> int:
    """From the engines' history: an agent is down from the stop of its container until that container's
    removal (which comes only after its successor is ready); the most such intervals open at once."""
    down, most = set(), 0
    for _, verb, name in world.engines.history:
        if verb == "stop":
            down.add(name)
        elif verb == "remove":
            down.discard(name)
        most = max(most, len(down))
    return most


def highest_txid(world: World, ordinal: int) -> int:
    return max((txid for (t, o, _), txid in world.replicas.txids.items() if (t, o) == ("acme", ordinal)), default=0)


# -- preflight: refused before anything stops ---------------------------------------------------------------------


def test_a_frozen_store_refuses_the_evacuation_before_anything_stops_and_a_retry_after_it_returns_succeeds(
    engine: Engine,
) -> None:
    world = provisioned(engine, agents=2)
    world.replicas.frozen = True
    op = run(world, evacuate(world))
    assert op.state == OperationState.failed and op.result["error_code"] == "store_unreachable", op.error
    assert op.error is not None and op.error.startswith("store_unreachable: object store does not answer")
    assert stops(world) == [], "nothing was stopped"
    assert [s["step"] for s in op.steps][-2:] == ["operation.refused", "operation.failed"]
    world.replicas.frozen = False
    assert_serving(world, 2)

    retry = run(world, evacuate(world))
    assert retry.state == OperationState.succeeded, retry.error
    assert retry.result["moved"] == 2 and [a.generation for a in agents(world)] == [2, 2]
    assert_serving(world, 2)


@pytest.mark.parametrize("which", ["target", "source"])
def test_an_engine_that_does_not_answer_refuses_the_move(engine: Engine, which: str) -> None:
    world = provisioned(engine, agents=1)
    source = agents(world)[0].node
    target = next(n for n in crash.NODES if n != source)
    world.engines(f"fake-{target if which == 'target' else source}").reachable = False
    op = run(world, evacuate(world, to_node=target))
    assert (op.state, op.result["error_code"]) == (OperationState.failed, "node_unreachable"), op.error
    assert stops(world) == []
    world.engines(f"fake-{target if which == 'target' else source}").reachable = True
    assert_serving(world, 1)


def test_no_capacity_refuses_before_anything_stops(engine: Engine) -> None:
    world = provisioned(engine, agents=1)
    with Session(engine) as session:
        for node in session.exec(select(Node)).all():
            if node.name != agents(world)[0].node:
                node.state = NodeState.cordoned
                session.add(node)
        session.commit()
    op = run(world, evacuate(world))
    assert (op.state, op.result["error_code"]) == (OperationState.failed, "no_capacity"), op.error
    assert stops(world) == []
    assert_serving(world, 1)


def test_a_scale_up_that_finds_no_node_leaves_no_starting_agent_behind(engine: Engine) -> None:
    """Capacity checked by the API can be gone when the operation runs: the new ordinal's row, made to plan it,
    must not stay `starting` with no node (found by the fuzz run's consistency check)."""
    world = provisioned(engine, agents=1)
    op_id = world.queue(lambda s: tenants.scale_tenant(s, "acme", 2))
    with Session(engine) as session:
        for node in session.exec(select(Node)).all():
            node.state = NodeState.cordoned
            session.add(node)
        session.commit()
    op = run(world, op_id)
    assert (op.state, op.result["error_code"]) == (OperationState.failed, "no_capacity"), op.error
    assert [(a.ordinal, a.state) for a in agents(world)] == [(0, AgentState.running)]


@pytest.mark.parametrize("request_", ["scale", "hibernate", "delete"])
def test_scale_down_hibernate_and_delete_refuse_a_frozen_store(engine: Engine, request_: str) -> None:
    world = provisioned(engine, agents=2)
    world.replicas.frozen = True
    queue = {
        "scale": lambda s: tenants.scale_tenant(s, "acme", 1),
        "hibernate": lambda s: tenants.hibernate_tenant(s, "acme"),
        "delete": lambda s: tenants.delete_tenant(s, "acme", purge=False),
    }[request_]
    op = run(world, world.queue(queue))
    assert (op.state, op.result["error_code"]) == (OperationState.failed, "store_unreachable"), op.error
    assert stops(world) == []
    world.replicas.frozen = False
    assert_serving(world, 2)


# -- rollback: the old incarnation serves again --------------------------------------------------------------------


def test_a_failure_at_every_call_of_a_move_leaves_the_tenant_serving_and_a_retry_converges(engine: Engine) -> None:
    """One injected failure at call 1, 2, ... of an evacuation (store, credentials, engines), until a run makes
    fewer calls than the point: after each, both agents serve (rolled back, refused, or moved), the operation
    says which with its code, and a retry moves what is left off n1 without losing a transaction."""
    outcomes: dict[str, int] = {}
    point = 0
    while True:
        point += 1
        world = provisioned(engine, agents=2)
        on_n1 = [a.ordinal for a in agents(world) if a.node == "n1"]
        before = {a.ordinal: highest_txid(world, a.ordinal) for a in agents(world)}
        faulty = Faulty(at=point)
        op = run(world, evacuate(world, from_node="n1"), faulty)
        if not faulty.fired:
            assert op.state == OperationState.succeeded
            break
        outcome = op.result.get("error_code", "succeeded") if op.state == OperationState.failed else "succeeded"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert outcome in ("succeeded", "rolled_back", "store_unreachable", "node_unreachable", "operation_failed")
        assert_serving(world, 2)
        assert most_down_at_once(world) <= 1
        if outcome == "rolled_back":
            steps = [s["step"] for s in op.steps]
            assert "agent.rolling_back" in steps and "agent.rolled_back" in steps, steps
            assert op.error is not None and "rolled back: gen 1 serves again on n1" in op.error

        retry = run(world, evacuate(world, from_node="n1"))
        assert retry.state == OperationState.succeeded, (point, retry.error)
        assert_serving(world, 2)
        assert all(a.node != "n1" for a in agents(world))
        for ordinal in on_n1:  # the moved agent restored everything: its counter only went up
            agent = next(a for a in agents(world) if a.ordinal == ordinal)
            assert world.replicas.txids[("acme", ordinal, agent.generation)] > before[ordinal]
    assert point > 15
    assert outcomes.get("rolled_back", 0) >= 5, outcomes


def test_a_store_that_freezes_after_the_preflight_rolls_the_move_back(engine: Engine) -> None:
    """The issue-11 run: the store freezes as the agent is stopped, its final sync fails, the move cannot go on.
    The old incarnation is started again (same generation, node, volume) once the store answers, within the
    rollback deadline; the operation fails `rolled_back`; the other agent was never stopped."""
    world = provisioned(engine, agents=2)
    home = agents(world)[0].node
    stop = world.engines(f"fake-{home}").stop

    def freezing_stop(name: str, timeout: float) -> Any:
        if not getattr(freezing_stop, "done", False):  # the move's stop (the rollback's own is a no-op, not frozen)
            freezing_stop.done = True  # type: ignore[attr-defined]
            world.replicas.frozen = True
            threading.Timer(0.5, lambda: setattr(world.replicas, "frozen", False)).start()
        return stop(name, timeout)

    world.engines(f"fake-{home}").stop = freezing_stop  # type: ignore[method-assign]
    op = run(world, evacuate(world, from_node=home), rollback_timeout=10)
    assert (op.state, op.result["error_code"]) == (OperationState.failed, "rolled_back"), op.error
    assert_serving(world, 2)
    assert (agents(world)[0].generation, agents(world)[0].node) == (1, home), "same generation, same node"
    assert [v for _, v, n in world.engines.history if n == "lf-acme-0-g1"] == ["stop", "restart"]
    assert stops(world) == ["lf-acme-0-g1"]

    world.engines(f"fake-{home}").stop = stop  # type: ignore[method-assign]
    retry = run(world, evacuate(world, from_node=home))
    assert retry.state == OperationState.succeeded, retry.error
    assert_serving(world, 2)


def test_a_rollback_that_cannot_finish_marks_the_agent_failed_and_a_retry_starts_it_first(engine: Engine) -> None:
    """The store stays frozen past the rollback deadline: the agent is marked failed (not left `stopping`),
    the operation fails `rollback_failed`; after the store returns a retried evacuation (no `moved: 0`) and a
    scale (no `stop it first`) both converge, starting the old incarnation in place first (nothing lost)."""
    for retried in ("evacuate", "scale"):
        world = provisioned(engine, agents=2)
        home = agents(world)[0].node
        stop = world.engines(f"fake-{home}").stop

        def freezing_stop(name: str, timeout: float, stop: Any = stop, world: World = world) -> Any:
            world.replicas.frozen = True
            return stop(name, timeout)

        world.engines(f"fake-{home}").stop = freezing_stop  # type: ignore[method-assign]
        op = run(world, evacuate(world, from_node=home), rollback_timeout=0.3)
        world.engines(f"fake-{home}").stop = stop  # type: ignore[method-assign]
        assert (op.state, op.result["error_code"]) == (OperationState.failed, "rollback_failed"), op.error
        down = agents(world)[0]
        assert (down.state, down.generation, down.node) == (AgentState.failed, 1, home)
        assert agents(world)[1].state == AgentState.running, "the other agent kept serving"
        world.replicas.frozen = False

        if retried == "evacuate":
            retry = run(world, evacuate(world, from_node=home))
            assert retry.state == OperationState.succeeded, retry.error
            assert retry.result["moved"] == 1
            steps = [s["step"] for s in retry.steps]
            assert steps.index("agent.reinstated") < steps.index("agent.stopped") < steps.index("agent.moved")
            assert agents(world)[0].generation == 2
        else:
            retry = run(world, world.queue(lambda s: tenants.scale_tenant(s, "acme", 2)))
            assert retry.state == OperationState.succeeded, retry.error
            assert (agents(world)[0].generation, agents(world)[0].node) == (1, home), "in place"
        assert_serving(world, 2)


def test_a_resumed_move_never_rolls_back_past_a_generation_that_served(engine: Engine) -> None:
    """Killed after the new generation became `running` (the router may have sent it writes), the re-run fails:
    the move must not give CURRENT back and restart the old incarnation (its writes would be lost)."""
    for point in range(1, 200):
        world = provisioned(engine, agents=1)
        op_id = evacuate(world)
        with contextlib.suppress(crash.Crash):
            world.run(op_id, crash.Crasher(crash_at=point))
        moving = agents(world)[0]
        if (moving.generation, moving.state) == (2, AgentState.running):
            break
    else:
        pytest.fail("no crash point left gen 2 running before the move finished")
    crash._PROVISIONED.clear()
    with Session(engine) as session:
        session.execute(update(Operation).where(col(Operation.id) == op_id).values(locked_until=0.0))
        session.commit()
    # after the preflight's 3 calls (2 pings, 1 store read), the source's stop finished (4) and the follower's memory
    # limit (5: reported, not fatal): the re-run of a routed move only waits for the first replica, and that fails
    faulty = Faulty(at=6)
    op = run(world, op_id, faulty)
    assert faulty.fired and op.state == OperationState.failed, [s["step"] for s in op.steps]
    assert "agent.rolling_back" not in [s["step"] for s in op.steps]
    assert (agents(world)[0].generation, agents(world)[0].state) == (2, AgentState.running)
    current = world.replicas.read_current("acme", 0)
    assert current is not None and current.generation == 2


@pytest.mark.parametrize("state", [AgentState.stopping, AgentState.starting])
def test_scale_starts_an_agent_left_in_a_transient_state_in_place(engine: Engine, state: AgentState) -> None:
    world = provisioned(engine, agents=2)
    agent = agents(world)[0]
    world.engines(f"fake-{agent.node}").stop(f"lf-acme-0-g{agent.generation}", 1)
    world.fleet().set_agent("acme", 0, state=state)
    op = run(world, world.queue(lambda s: tenants.scale_tenant(s, "acme", 2)))
    assert op.state == OperationState.succeeded, op.error
    assert (agents(world)[0].generation, agents(world)[0].node) == (agent.generation, agent.node)
    assert_serving(world, 2)


# -- rolling moves ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 2])
def test_an_evacuation_never_has_more_than_max_unavailable_agents_down(engine: Engine, limit: int | None) -> None:
    world = provisioned(engine, agents=3)
    slow_stop = {url: world.engines(url).stop for url in list(world.engines.drivers)}
    for url, stop in slow_stop.items():

        def slow(name: str, timeout: float, stop: Any = stop) -> Any:
            time.sleep(0.1)  # moves overlap whenever the bound lets them
            return stop(name, timeout)

        world.engines(url).stop = slow  # type: ignore[method-assign]
    op = run(world, evacuate(world, **({"max_unavailable": limit} if limit else {})))
    assert op.state == OperationState.succeeded, op.error
    assert most_down_at_once(world) == (limit or 1)
    assert_serving(world, 3)
    assert [s["step"] for s in op.steps].count("agent.moved") == 3, "every agent's lines are in the step list"


def test_a_drain_moves_at_most_one_agent_of_each_tenant_at_a_time(engine: Engine) -> None:
    world = provisioned(engine, agents=4)  # spread over n1..n3: two of them on n1
    on_n1 = [a.ordinal for a in agents(world) if a.node == "n1"]
    assert len(on_n1) == 2
    op = run(world, world.queue(lambda s: node_services.drain_node(s, "n1")))
    assert op.state == OperationState.succeeded, op.error
    assert most_down_at_once(world) == 1
    assert sorted(stops(world)) == sorted(f"lf-acme-{i}-g1" for i in on_n1)
    assert_serving(world, 4)
    assert all(a.node != "n1" for a in agents(world))


def test_a_drain_s_lines_and_events_name_the_tenant_of_every_agent_they_are_about(engine: Engine) -> None:
    """A node's operation moves many tenants' agents, each in its own thread: `agent 0` alone would not say whose."""
    world = provisioned(engine, agents=2)
    world.run(world.queue(lambda s: tenants.create_tenant(s, TenantCreate(name="zeta", agents=3))))
    on_n1 = {(a.tenant, a.ordinal) for a in agents(world, "acme") + agents(world, "zeta") if a.node == "n1"}
    assert {tenant for tenant, _ in on_n1} == {"acme", "zeta"}
    op = run(world, world.queue(lambda s: node_services.drain_node(s, "n1")))
    assert op.state == OperationState.succeeded, op.error
    about_agents = [s for s in op.steps if "agent" in s]
    assert all(s.get("tenant") in ("acme", "zeta") for s in about_agents), about_agents
    assert {(s["tenant"], s["agent"]) for s in about_agents if s["step"] == "agent.moved"} == on_n1
    with Session(engine) as session:
        moved = session.exec(select(Event).where(Event.operation == op.id, Event.kind == "agent.moved")).all()
    assert sorted((e.tenant, e.agent) for e in moved) == sorted(on_n1), "each tenant's history shows its move"


def test_a_failed_move_stops_the_rollout(engine: Engine) -> None:
    world = provisioned(engine, agents=3)
    first = True
    for url in list(world.engines.drivers):
        stop = world.engines(url).stop

        def freezing(name: str, timeout: float, stop: Any = stop) -> Any:
            nonlocal first
            if first:
                first = False
                world.replicas.frozen = True
                threading.Timer(0.3, lambda: setattr(world.replicas, "frozen", False)).start()
            return stop(name, timeout)

        world.engines(url).stop = freezing  # type: ignore[method-assign]
    op = run(world, evacuate(world), rollback_timeout=10)
    assert op.result["error_code"] == "rolled_back", op.error
    assert len(stops(world)) == 1, "the agents not begun were not touched"
    assert_serving(world, 3)


# -- the stuck-state detector -----------------------------------------------------------------------------------


def test_a_stuck_agent_is_repaired_once_then_escalated(engine: Engine) -> None:
    world = provisioned(engine, agents=2)
    agent = agents(world)[0]
    world.engines(f"fake-{agent.node}").stop(f"lf-acme-0-g{agent.generation}", 1)
    world.fleet().set_agent("acme", 0, state=AgentState.stopping)
    age(engine, "acme/0", 100)

    assert sweep(engine, stuck_after=60) == [crash_finding("acme/0", "stopping", "repair")]
    assert sweep(engine, stuck_after=60) == [], "its tenant has a repair queued: nothing twice"
    with Session(engine) as session:
        repair = session.exec(select(Operation).where(Operation.kind == OperationKind.scale)).one()
        assert repair.params == {"agents": 2, "repair": True, "stuck": "acme/0"}
        assert session.exec(select(Event).where(Event.kind == "agent.stuck")).one().operation == repair.id
    assert run(world, repair.id).state == OperationState.succeeded
    assert_serving(world, 2)
    assert (agents(world)[0].generation, agents(world)[0].node) == (agent.generation, agent.node)

    world.fleet().set_agent("acme", 0, state=AgentState.starting)  # stuck again, soon after the repair
    age(engine, "acme/0", 100)
    assert sweep(engine, stuck_after=60) == [crash_finding("acme/0", "failed", "escalate")]
    assert agents(world)[0].state == AgentState.failed
    with Session(engine) as session:
        assert session.exec(select(Event).where(Event.kind == "agent.stuck_escalated")).one().agent == 0
        assert len(session.exec(select(Operation).where(Operation.kind == OperationKind.scale)).all()) == 1


def crash_finding(agent: str, state: str, action: str) -> Finding:
    return Finding(agent, state, action)


def age(engine: Engine, agent_id: str, seconds: float) -> None:
    """The agent's row last changed `seconds` ago."""
    with Session(engine) as session:
        session.execute(update(Agent).where(col(Agent.id) == agent_id).values(updated_at=time.time() - seconds))
        session.commit()


def test_an_agent_whose_operation_runs_is_not_stuck(engine: Engine) -> None:
    world = provisioned(engine, agents=1)
    world.fleet().set_agent("acme", 0, state=AgentState.starting)
    age(engine, "acme/0", 1000)
    evacuate(world)  # pending: its runner will settle the agent
    assert sweep(engine, stuck_after=60) == []


# -- stopping a reconciler ------------------------------------------------------------------------------------------


def test_stop_hands_a_running_operation_back_at_once_and_joins_its_threads(engine: Engine) -> None:
    with Session(engine) as session:
        op = Operation(kind=OperationKind.scale, tenant="acme", params={"agents": 1})
        session.add(op)
        session.commit()
        op_id = op.id
    started = threading.Event()

    def runner(ctx: OpContext) -> None:
        while True:
            ctx.step("agent.waiting", agent=0)  # a step boundary, where a stopping reconciler hands it over
            started.set()
            time.sleep(0.05)

    reconciler = Reconciler(engine, {OperationKind.scale: runner}, workers=2, lease=30, stuck_after=60)
    reconciler.start()
    assert started.wait(10)
    begun = time.monotonic()
    assert reconciler.stop(timeout=10) is True
    assert time.monotonic() - begun < 5
    assert not [t for t in threading.enumerate() if t.name == f"litefleet-lease-{op_id}" and t.is_alive()]
    with Session(engine) as session:
        row = session.get(Operation, op_id)
        assert row is not None
        assert (row.state, row.lock_token, row.locked_until) == (OperationState.running, None, None)
        steps = len(row.steps)
    again = claim(engine, lease=30)  # another control plane: not a 30 s lease later, now
    assert again is not None and again[0].id == op_id and again[0].attempts in (2, 3)  # 3: the other worker too
    assert steps >= 1
