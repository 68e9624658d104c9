"""Routes answered from the observer: workflows no running agent holds (retired ordinals, hibernated tenants,
agents not answering), a tenant's history at a past time, fleet-wide problems; and how observer failures map to
`{code, message}` answers. The observer is a stand-in (tests/unit/control_plane/observed.py); agents are faked
at the router's HTTP client."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from control_plane.app import create_app
from control_plane.cli import commands
from control_plane.client import FleetClient
from control_plane.db.models import AgentState
from control_plane.observer import CopyUnreadable
from control_plane.services import routing
from control_plane.settings import Settings, api_token
from tests.unit.control_plane.observed import T0, FakeObserver, add_tenant, info


def api(engine: Engine, tmp_path: Path, observer: Any) -> TestClient:
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(state_dir=tmp_path, database_url=url)
    app = create_app(settings, background=False, observer=observer, engine=engine)
    return TestClient(app, headers={"authorization": f"Bearer {api_token(settings, create=False)}"})


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """Running agents by URL -> the workflows they hold; any other URL does not answer."""
    held: dict[str, list[dict[str, Any]]] = {}

    def get(request: httpx.Request) -> httpx.Response:
        url = str(request.url.copy_with(query=None))
        base, _, path = url.partition("/v1/workflows")
        if base not in held:
            raise httpx.ConnectError("connection refused")
        if not path:
            listing = {"workflows": held[base], "counts": {"SUCCESS": len(held[base])}}
            return httpx.Response(200, json=listing)
        for workflow in held[base]:
            if workflow["id"] == path.strip("/"):
                return httpx.Response(200, json=workflow)
        return httpx.Response(404, json={"code": "workflow_not_found", "message": "no"})

    monkeypatch.setattr(routing, "_client", lambda: httpx.AsyncClient(transport=httpx.MockTransport(get)))
    monkeypatch.setattr(routing, "BREAKERS", routing.Breakers())
    return held


def scaled_down(engine: Engine, agents: dict[str, list[dict[str, Any]]]) -> FakeObserver:
    """acme scaled 3 -> 1: agent 0 runs (holds sc-0), agents 1 and 2 retired (their replicas hold sc-1, sc-3)."""
    add_tenant(engine, "acme", {0: (AgentState.running, 1), 1: (AgentState.retained, 1), 2: (AgentState.retained, 1)})
    agents["http://agent-acme-0.invalid"] = [{"id": "sc-0", "status": "SUCCESS", "created_at": 3.0}]
    return FakeObserver(
        copies={("acme", 0): (1, [info("sc-0")]), ("acme", 1): (1, [info("sc-1")]), ("acme", 2): (1, [info("sc-3")])}
    )


def test_a_workflow_of_a_retired_ordinal_is_answered_from_its_replica(
    engine: Engine, tmp_path: Path, agents: dict[str, list[dict[str, Any]]]
) -> None:
    client = api(engine, tmp_path, scaled_down(engine, agents))
    own = client.get("/v1/tenants/acme/workflows/sc-0").json()
    assert (own["source"], own["agent"]) == ("agent", 0)
    answer = client.get("/v1/tenants/acme/workflows/sc-3")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["status"], body["result"], body["agent"], body["source"]) == (
        "sc-3",
        "SUCCESS",
        1,
        2,
        "observer",
    )
    assert body["args"] == [3] and body["freshness"]["generation"] == 1 and body["freshness"]["txid"] == 42
    assert body["freshness"]["kind"] == "snapshot" and body["freshness"]["seconds_behind"] == 0.0
    missing = client.get("/v1/tenants/acme/workflows/nope")
    assert (missing.status_code, missing.json()["code"]) == (404, "workflow_not_found")


def test_the_list_covers_running_and_retired_ordinals_saying_where_each_came_from(
    engine: Engine, tmp_path: Path, agents: dict[str, list[dict[str, Any]]]
) -> None:
    body = api(engine, tmp_path, scaled_down(engine, agents)).get("/v1/tenants/acme/workflows").json()
    assert {(w["id"], w["agent"]) for w in body["workflows"]} == {("sc-0", 0), ("sc-1", 1), ("sc-3", 2)}
    assert [(a["agent"], a["source"]) for a in body["agents"]] == [(0, "agent"), (1, "observer"), (2, "observer")]
    assert body["counts"] == {"SUCCESS": 3} and body["unavailable"] == []


def test_an_agent_that_does_not_answer_is_read_from_its_copy(
    engine: Engine, tmp_path: Path, agents: dict[str, list[dict[str, Any]]]
) -> None:
    observer = scaled_down(engine, agents)
    agents.clear()  # agent 0 is being moved / its node is unreachable
    client = api(engine, tmp_path, observer)
    assert client.get("/v1/tenants/acme/workflows/sc-0").json()["source"] == "observer"
    body = client.get("/v1/tenants/acme/workflows").json()
    assert [(a["agent"], a["source"]) for a in body["agents"]] == [(0, "observer"), (1, "observer"), (2, "observer")]


def test_a_hibernated_tenant_still_lists_its_finished_workflows(
    engine: Engine, tmp_path: Path, agents: dict[str, list[dict[str, Any]]]
) -> None:
    add_tenant(engine, "sleepy", {0: (AgentState.retained, 2)}, hibernated=True)
    observer = FakeObserver(copies={("sleepy", 0): (2, [info("done-1"), info("done-2")])})
    client = api(engine, tmp_path, observer)
    body = client.get("/v1/tenants/sleepy/workflows").json()
    assert sorted(w["id"] for w in body["workflows"]) == ["done-1", "done-2"]
    assert body["agents"][0]["source"] == "observer" and body["agents"][0]["freshness"]["generation"] == 2
    assert client.get("/v1/tenants/sleepy/workflows/done-2").json()["source"] == "observer"


def test_history_shows_the_state_as_of_a_past_time(
    engine: Engine, tmp_path: Path, agents: dict[str, list[dict[str, Any]]]
) -> None:
    add_tenant(engine, "acme", {0: (AgentState.running, 2)})
    before, after = T0, T0 + dt.timedelta(minutes=10)  # evacuated (generation 1 -> 2) in between
    observer = FakeObserver(
        history={
            ("acme", 0): [
                (before, 1, [info("a", "PENDING", None)]),
                (after, 2, [info("a"), info("b", "ERROR", None, "boom")]),
            ]
        }
    )
    client = api(engine, tmp_path, observer)
    then = client.get("/v1/tenants/acme/history", params={"at": (before + dt.timedelta(minutes=1)).isoformat()})
    assert then.status_code == 200, then.text
    body = then.json()
    assert body["counts"] == {"PENDING": 1}
    (agent,) = body["agents"]
    assert agent["freshness"]["generation"] == 1 and agent["freshness"]["kind"] == "snapshot"
    assert agent["freshness"]["as_of"].startswith("2026-11-27T09:01")
    now = client.get("/v1/tenants/acme/history", params={"at": "2026-11-27T09:30:00", "agent": 0}).json()
    assert now["counts"] == {"SUCCESS": 1, "ERROR": 1} and now["agents"][0]["freshness"]["generation"] == 2
    early = client.get("/v1/tenants/acme/history", params={"at": "2026-11-27T08:00:00Z"})
    assert early.status_code == 200 and early.json()["unavailable"][0]["code"] == "no_state_at"
    one = client.get("/v1/tenants/acme/history", params={"at": "2026-11-27T08:00:00Z", "agent": 0})
    assert (one.status_code, one.json()["code"]) == (404, "no_state_at")
    bad = client.get("/v1/tenants/acme/history", params={"at": "yesterday"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")


def test_problems_across_the_fleet(engine: Engine, tmp_path: Path) -> None:
    observer = FakeObserver(
        copies={("acme", 0): (1, [info("ok"), info("bad", "ERROR", None, "boom")]), ("beta", 1): (3, [info("x")])}
    )
    body = api(engine, tmp_path, observer).get("/v1/workflows/problems").json()
    assert [(w["tenant"], w["agent"], w["id"], w["error"]["message"]) for w in body["workflows"]] == [
        ("acme", 0, "bad", "boom")
    ]
    assert body["agents_checked"] == 2 and body["workflows"][0]["freshness"]["kind"] == "follow"


def test_observer_failures_are_answers_with_a_code(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_tenant(engine, "acme", {0: (AgentState.retained, 1)}, hibernated=True)
    without = api(engine, tmp_path, None)
    answer = without.get("/v1/tenants/acme/history", params={"at": "2026-11-27T09:00:00Z"})
    assert (answer.status_code, answer.json()["code"]) == (503, "observer_unavailable")
    assert without.get("/v1/workflows/problems").status_code == 503
    assert without.get("/v1/tenants/acme/workflows/w").json()["code"] == "no_agent_running"

    observer = FakeObserver(copies={("acme", 0): (1, [])})

    def unreadable(*_: Any, **__: Any) -> None:
        raise CopyUnreadable("acme--0--g1.db stayed unreadable: database disk image is malformed")

    monkeypatch.setattr(observer, "find_workflow", unreadable)
    broken = api(engine, tmp_path, observer).get("/v1/tenants/acme/workflows/w")
    assert (broken.status_code, broken.json()["code"]) == (503, "copy_unreadable")
    assert "malformed" in broken.json()["message"]


class _InProcess(FleetClient):
    """The /v1 client, sending through the test client instead of a socket."""

    def __init__(self, client: TestClient) -> None:
        super().__init__("http://testserver")
        self._client = client

    def send(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        return self._client.request(method, path, **kwargs)


def test_inspect_shows_workflows_sources_and_the_errors_of_failed_ones(
    engine: Engine, tmp_path: Path, agents: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    observer = scaled_down(engine, agents)
    observer.copies[("acme", 2)] = (1, [info("sc-3"), info("sc-4", "ERROR", None, "count went negative")])
    client = api(engine, tmp_path, observer)
    monkeypatch.setattr(commands, "_client", lambda: _InProcess(client))
    monkeypatch.setattr(commands, "configure_logging", lambda: None)  # would log to the runner's closed stderr
    shown = CliRunner().invoke(commands.app, ["inspect", "acme"])
    assert shown.exit_code == 0, shown.output
    assert "sc-4" in shown.output and "count went negative" in shown.output
    assert "workflow sc-4 (count) ERROR on agent 2 [snapshot of generation 1, txid 42]" in shown.output
    as_json = CliRunner().invoke(commands.app, ["inspect", "acme", "--agent", "2", "--json"])
    body = json.loads(as_json.output)
    assert {w["id"] for w in body["workflows"]} == {"sc-3", "sc-4"} and body["details"][0]["id"] == "sc-4"
    refused = CliRunner().invoke(commands.app, ["inspect", "acme", "--at", "2026-11-27T08:00:00Z", "--agent", "0"])
    assert refused.exit_code == 2 and "no_state_at" in refused.output
