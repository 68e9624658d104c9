"""One frozen agent never stalls its tenant: the router asks every agent at once, with short timeouts, and skips
an agent whose circuit breaker opened. The agents are real local HTTP servers; the frozen one accepts connections
and never answers (as a SIGSTOPped process does)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import AgentState
from control_plane.errors import AgentUnavailable
from control_plane.services import routing
from control_plane.services.breakers import Breakers
from tests.unit.control_plane.hanging import Answer, HangingServer, serving
from tests.unit.control_plane.observed import add_tenant


class FakeAgent:
    """An agent's workflow routes: POST /v1/workflows/{name} starts (idempotent by id), GET finds."""

    def __init__(self) -> None:
        self.workflows: dict[str, dict[str, Any]] = {}

    def __call__(self, method: str, path: str, body: bytes) -> Answer:
        route = path.split("?")[0].removeprefix("/v1/workflows/")
        if method == "POST":
            started = json.loads(body)
            self.workflows.setdefault(started["id"], {"id": started["id"], "status": "PENDING"})
            return 200, self.workflows[started["id"]]
        if route in self.workflows:
            return 200, self.workflows[route]
        return 404, {"code": "workflow_not_found", "message": "no"}


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "START_TIMEOUT", 2.0)
    monkeypatch.setattr(routing, "LOOKUP_TIMEOUT", 2.0)
    monkeypatch.setattr(routing, "BREAKERS", Breakers(threshold=3, cooldown=2.0))


@pytest.fixture
def two_agents(engine: Engine) -> Iterator[tuple[HangingServer, HangingServer, FakeAgent, FakeAgent]]:
    first, second = FakeAgent(), FakeAgent()
    with serving(first) as frozen, serving(second) as healthy:
        add_tenant(engine, "acme", {0: (AgentState.running, 1), 1: (AgentState.running, 1)})
        _point(engine, {"acme/0": frozen.url, "acme/1": healthy.url})
        yield frozen, healthy, first, second


def _point(engine: Engine, urls: dict[str, str]) -> None:
    from control_plane.db.models import Agent

    with Session(engine) as session:
        for agent_id, url in urls.items():
            agent = session.get(Agent, agent_id)
            assert agent is not None
            agent.url, agent.agent_token = url, "token"
            session.add(agent)
        session.commit()


def _home_of(workflow_id: str) -> int:
    return int(routing.hashlib.sha256(workflow_id.encode()).hexdigest(), 16) % 2


def test_new_workflows_go_to_the_healthy_agent_once_the_frozen_ones_breaker_opens(
    engine: Engine, two_agents: tuple[HangingServer, HangingServer, FakeAgent, FakeAgent]
) -> None:
    frozen, _, _, on_healthy = two_agents
    frozen.frozen.set()

    async def run() -> tuple[list[float], int]:
        took, failed = [], 0
        for i in range(30):
            workflow_id = f"wf-{i}"
            started = time.monotonic()
            try:
                status, answer = await routing.start_workflow(engine, "acme", "hello", {"id": workflow_id})
                assert status == 200 and answer["agent"] == 1
            except AgentUnavailable:
                failed += 1
                assert _home_of(workflow_id) == 0
            took.append(time.monotonic() - started)
        return took, failed

    took, failed = asyncio.run(run())
    # counted before the thaw (a thawed agent answers the starts it held, as a resumed process would): each start
    # that failed was sent to the frozen agent once, and none after its breaker opened
    sent_to_frozen = sum(1 for method, _ in frozen.requests if method == "POST")
    frozen.frozen.clear()
    print(f"30 starts with agent 0 frozen: {failed} answered 503, the last 20 took at most {max(took[10:]):.3f}s")
    assert failed <= 3  # the breaker's threshold: then agent 0 is skipped
    assert max(took[10:]) < routing.START_TIMEOUT / 2  # nothing waits out the frozen agent's START_TIMEOUT any more
    assert len(on_healthy.workflows) == 30 - failed and sent_to_frozen == failed


def test_a_lookup_is_answered_by_the_agent_that_holds_it_while_another_is_frozen(
    engine: Engine, two_agents: tuple[HangingServer, HangingServer, FakeAgent, FakeAgent]
) -> None:
    frozen, _, _, on_healthy = two_agents
    on_healthy.workflows["w-held"] = {"id": "w-held", "status": "SUCCESS"}
    frozen.frozen.set()
    started = time.monotonic()
    found = asyncio.run(routing.find_workflow(engine, "acme", "w-held", 5))  # a long-poll: the frozen agent's
    took = time.monotonic() - started  # call would run LOOKUP_TIMEOUT + 5 s, the holder's answers at once
    frozen.frozen.clear()
    assert (found["agent"], found["status"]) == (1, "SUCCESS")
    # asked at once: the frozen agent's LOOKUP_TIMEOUT + 5 s is not waited out (half of it: past a loaded box's noise)
    assert took < (routing.LOOKUP_TIMEOUT + 5) / 2
    with pytest.raises(AgentUnavailable):  # nobody answering holds it, and one agent did not answer: no false 404
        frozen.frozen.set()
        try:
            asyncio.run(routing.find_workflow(engine, "acme", "w-missing", 0))
        finally:
            frozen.frozen.clear()


def test_an_agent_refusing_connections_is_passed_over_at_once_and_tried_again_after_the_cool_down(
    engine: Engine, two_agents: tuple[HangingServer, HangingServer, FakeAgent, FakeAgent]
) -> None:
    _, healthy, _, on_healthy = two_agents
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: connection refused
        _point(engine, {"acme/0": dead})
        homed_on_0 = [f"r-{i}" for i in range(40) if _home_of(f"r-{i}") == 0][:5]
        for workflow_id in homed_on_0:
            status, answer = asyncio.run(routing.start_workflow(engine, "acme", "hello", {"id": workflow_id}))
            assert (status, answer["agent"]) == (200, 1)  # nothing was sent to agent 0: the next one took it
        assert routing.BREAKERS.state("acme/0@1") == "open"
    revived = FakeAgent()
    with serving(revived) as back:
        _point(engine, {"acme/0": back.url})
        time.sleep(2.1)  # the cool-down: agent 0 is probed again (in the background), and it answers
        first, then = [f"b-{i}" for i in range(40) if _home_of(f"b-{i}") == 0][:2]

        async def after_the_trial() -> tuple[int, int]:
            _, during = await routing.start_workflow(engine, "acme", "hello", {"id": first})
            await asyncio.sleep(0.5)
            _, after = await routing.start_workflow(engine, "acme", "hello", {"id": then})
            return during["agent"], after["agent"]

        assert asyncio.run(after_the_trial()) == (1, 0)  # the request that set off the probe did not wait for it
        assert routing.BREAKERS.state("acme/0@1") == "closed" and ("GET", "/healthz") in back.requests
    assert healthy.requests and len(on_healthy.workflows) == 6


# -- the breaker on its own ----------------------------------------------------------------------------------------

Event = tuple[str, float]  # ("fail" | "ok" | "check", seconds passed before it)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fail", "ok", "check"]), st.floats(0, 3)), max_size=60))
def test_a_breaker_skips_an_agent_only_after_threshold_failures_and_lets_one_trial_per_cool_down(
    events: list[Event],
) -> None:
    now = [0.0]
    breakers = Breakers(threshold=3, cooldown=2.0, clock=lambda: now[0])
    failures_in_a_row, opened_or_tried = 0, 0.0
    for kind, passed in events:
        now[0] += passed
        if kind == "fail":
            breakers.failed("a")
            failures_in_a_row += 1
            if failures_in_a_row >= 3:
                opened_or_tried = now[0]  # a failure (re)opens it for a full cool-down
        elif kind == "ok":
            breakers.succeeded("a")
            failures_in_a_row = 0
        else:
            verdict = breakers.check("a")
            if failures_in_a_row < 3:
                assert verdict == "call"  # closed: every call goes through
            else:
                assert verdict != "call"  # open: never a user's call
                # one trial per cool-down, and one as soon as a cool-down has passed
                assert (verdict == "trial") == (now[0] - opened_or_tried >= 2.0)
                if verdict == "trial":
                    opened_or_tried = now[0]
