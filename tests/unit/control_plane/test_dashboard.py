"""The dashboard over a fleet of fakes (no Docker): login and its cookie, every page rendered from real fleet rows
(tenants provisioned and evacuated by the reconciler through the API), alerts, charts, and the live streams."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, update

from control_plane.app import create_app
from control_plane.dashboard import plots
from control_plane.dashboard.auth import COOKIE, session_value
from control_plane.dashboard.history import LagHistory
from control_plane.db.models import (
    Agent,
    AgentPublic,
    AgentState,
    Event,
    Node,
    NodeState,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
)
from control_plane.observer import AgentRef, CopyKind
from control_plane.services import overview
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import fake_fleet
from tests.unit.control_plane.observed import FakeObserver, add_tenant, info

TOKEN = "dash-s3cret-of-24-characters"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def fleet_app(engine: Engine, tmp_path: Path, token: str | None = TOKEN) -> TestClient:
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(
        state_dir=tmp_path,
        database_url=url,
        api_token=token,
        move_parallelism=2,
        ready_timeout=5,
        drain_timeout=1,
        heartbeat_interval=0.2,
    )
    fleet, engines = fake_fleet(engine, settings)
    app = create_app(settings, fleet)
    app.state.fake_engines = engines  # tests reach the fake engines through the app (e.g. to take one down)
    app.state.probe_engine = lambda engine_url: None
    return TestClient(app)


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    """A control plane with a token, three fake nodes and acme on 2 agents, evacuated once from n1."""
    with fleet_app(engine, tmp_path) as client:
        for name in ("n1", "n2", "n3"):
            answer = client.post("/v1/nodes", json={"name": name, "engine_url": f"fake-{name}"}, headers=AUTH)
            assert answer.status_code == 201, answer.text
        made = client.post("/v1/tenants?wait=true&timeout=30", json={"name": "acme", "agents": 2}, headers=AUTH)
        assert made.json()["state"] == "succeeded", made.text
        moved = client.post("/v1/tenants/acme/evacuate?wait=true&timeout=30", json={"to_node": "n3"}, headers=AUTH)
        assert moved.json()["state"] == "succeeded", moved.text
        client.cookies.clear()
        yield client


def sign_in(client: TestClient) -> None:
    answer = client.post("/ui/login", data={"token": TOKEN, "next": "/ui"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"


# -- auth -----------------------------------------------------------------------------------------------------------


def test_without_a_session_every_page_leads_to_the_login(api: TestClient) -> None:
    assert api.get("/", follow_redirects=False).headers["location"] == "/ui"
    for path in ("/ui", "/ui/tenants/acme", "/ui/events", "/ui/events/stream"):
        answer = api.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/ui/login?next=")
    login = api.get("/ui/login")
    assert login.status_code == 200 and 'name="token"' in login.text


def test_a_wrong_token_is_refused_and_sets_no_cookie(api: TestClient) -> None:
    answer = api.post("/ui/login", data={"token": "wrong"}, follow_redirects=False)
    assert answer.status_code == 401 and "not this control plane" in answer.text
    assert COOKIE not in answer.cookies and "set-cookie" not in answer.headers
    api.cookies.set(COOKIE, "forged")
    assert api.get("/ui", follow_redirects=False).status_code == 303


def test_the_right_token_gives_an_httponly_strict_cookie_that_is_not_the_token(api: TestClient) -> None:
    answer = api.post("/ui/login", data={"token": TOKEN, "next": "/ui/events"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/events"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert api.cookies[COOKIE] == session_value(TOKEN)
    assert api.get("/ui").status_code == 200
    assert api.post("/ui/logout", follow_redirects=False).status_code == 303
    assert api.get("/ui", follow_redirects=False).status_code == 303


def test_login_never_redirects_off_the_dashboard(api: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example", "/v1/nodes"):
        answer = api.post("/ui/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
        assert answer.headers["location"] == "/ui"


def test_without_a_configured_token_the_dashboard_asks_for_the_generated_one(engine: Engine, tmp_path: Path) -> None:
    with fleet_app(engine, tmp_path, token=None) as client:  # the control plane wrote STATE_DIR/api-token
        assert client.get("/ui", follow_redirects=False).status_code == 303
        generated = (tmp_path / "api-token").read_text()
        assert client.get("/ui", headers={"authorization": f"Bearer {generated}"}).status_code == 200


# -- pages ----------------------------------------------------------------------------------------------------------


def test_the_overview_shows_nodes_tenants_agents_and_charts(api: TestClient) -> None:
    sign_in(api)
    page = api.get("/ui")
    assert page.status_code == 200
    for text in ("n1", "n2", "n3", "acme", "acme/0", "acme/1", "Nothing needs attention", "<svg"):
        assert text in page.text, text
    assert "2 / 20" in page.text  # n3's capacity used / total after the evacuation
    assert "evacuate" in page.text and "/ui/operations/" in page.text


def test_the_tenant_page_shows_each_generation_where_it_ran_and_the_downtime(api: TestClient) -> None:
    sign_in(api)
    page = api.get("/ui/tenants/acme")
    assert page.status_code == 200
    assert "gen 1 on <b>n1</b>" in page.text or "gen 1 on <b>n2</b>" in page.text
    assert "gen 2 on <b>n3</b>" in page.text
    assert "acme/0:" in page.text and "downtime" in page.text
    assert api.get("/ui/tenants/nobody").status_code == 404


def test_the_operation_and_events_pages_render_their_logs(api: TestClient) -> None:
    sign_in(api)
    ops = api.get("/v1/operations?tenant=acme", headers=AUTH).json()["items"]
    evacuation = next(op for op in ops if op["kind"] == "evacuate")
    page = api.get(f"/ui/operations/{evacuation['id']}")
    assert page.status_code == 200 and "agent.moved" in page.text and "succeeded" in page.text
    assert page.text.count('<li class="step">') == len(evacuation["steps"])
    events = api.get("/ui/events")
    assert events.status_code == 200 and "agent.started" in events.text and "EventSource" in events.text


def test_alerts_name_down_nodes_stuck_agents_stalled_replication_and_failed_operations(engine: Engine) -> None:
    now = time.time()
    with Session(engine) as session:
        session.add(Node(name="n1", engine_url="fake-n1", state=NodeState.down, last_seen_at=now - 60))
        session.add(Tenant(name="acme", agents=3))
        session.add(Agent(id="acme/0", tenant="acme", ordinal=0, state=AgentState.starting, updated_at=now - 600))
        # acme/1's own view says all is well; the store-side measurement says stalled
        stalled = {"seconds_since_sync": 1, "lag_txids": 0, "local_txid": 9, "store_txid": 2, "synced_at": now - 90}
        session.add(
            Agent(id="acme/1", tenant="acme", ordinal=1, state=AgentState.running, replication="stalled", **stalled)
        )
        session.add(
            Agent(id="acme/2", tenant="acme", ordinal=2, state=AgentState.running, replication="ok", synced_at=now)
        )
        session.add(Agent(id="acme/3", tenant="acme", ordinal=3, state=AgentState.retained, replication="stalled"))
        session.add(
            Operation(
                id="op1",
                kind=OperationKind.scale,
                tenant="acme",
                state=OperationState.failed,
                error="boom",
                finished_at=now,
            )
        )
        session.commit()
        view = overview.fleet_overview(session, now=now)
    kinds = {(alert.kind, alert.subject) for alert in view.alerts}
    assert kinds == {
        ("node_down", "n1"),
        ("agent_stuck", "acme/0"),
        ("replication_stalled", "acme/1"),
        ("operation_failed", "op1"),
    }
    message = next(alert.message for alert in view.alerts if alert.kind == "replication_stalled")
    assert re.search(r"last confirmed sync 9\ds ago", message) and "replica at txid 2, agent reported 9" in message
    assert view.tenants[0].by_state == {"starting": 1, "running": 2, "retained": 1}


def test_the_overview_page_shows_alerts(engine: Engine, tmp_path: Path) -> None:
    with Session(engine) as session:
        session.add(Node(name="n9", engine_url="fake-n9", state=NodeState.down))
        session.commit()
    client = fleet_app(engine, tmp_path)
    client.app.state.fake_engines("fake-n9").reachable = False  # type: ignore[attr-defined]  # it stays down
    with client:
        page = client.get("/ui", headers=AUTH)
    assert "node n9 is down" in page.text and "alert-node_down" in page.text


# -- live streams ---------------------------------------------------------------------------------------------------


def read_events(client: TestClient, url: str, until: str) -> list[tuple[str, dict[str, object]]]:
    found: list[tuple[str, dict[str, object]]] = []
    kind = ""
    with client.stream("GET", url) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                found.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == until:
                    break
    return found


def test_the_operation_stream_sends_its_steps_then_done(api: TestClient) -> None:
    sign_in(api)
    ops = api.get("/v1/operations?tenant=acme", headers=AUTH).json()["items"]
    evacuation = next(op for op in ops if op["kind"] == "evacuate")
    found = read_events(api, f"/ui/operations/{evacuation['id']}/stream?lifetime=5", until="done")
    steps = [data["step"] for kind, data in found if kind == "step"]
    assert steps == [step["step"] for step in evacuation["steps"]]
    assert found[-1] == ("done", {"state": "succeeded"})
    resumed = read_events(api, f"/ui/operations/{evacuation['id']}/stream?after=3&lifetime=5", until="done")
    assert len(resumed) == len(evacuation["steps"]) - 3 + 1


def test_the_events_stream_sends_events_as_they_are_written(api: TestClient, engine: Engine) -> None:
    sign_in(api)
    found = read_events(api, "/ui/events/stream?after=0&lifetime=2", until="fleet")
    assert found and found[0][0] == "fleet" and found[0][1]["kind"] == "node.registered"
    with Session(engine) as session:
        newest = overview.latest_event_id(session)
        session.add(Event(kind="test.hello", message="written after the stream began"))
        session.commit()
    fresh = read_events(api, f"/ui/events/stream?after={newest}&lifetime=2", until="fleet")
    assert fresh[0][1]["kind"] == "test.hello"


def test_a_stream_answers_404_for_an_unknown_operation(api: TestClient) -> None:
    sign_in(api)
    assert api.get("/ui/operations/nope/stream").status_code == 404


# -- lag history and charts -----------------------------------------------------------------------------------------


def agent(lag: int, at: float) -> AgentPublic:
    return AgentPublic(
        tenant="acme", ordinal=0, generation=1, node="n1", state=AgentState.running, url=None, updated_at=at,
        probed_at=at, lag_txids=lag, lag_seconds=2.0 + lag, seconds_since_sync=1.0,
    )  # fmt: skip


def test_lag_history_keeps_one_sample_per_probe_and_spots_growing_lag() -> None:
    history = LagHistory(keep=3)
    for at, lag in [(1.0, 0), (1.0, 0), (2.0, 1), (3.0, 2), (4.0, 5)]:
        history.record([agent(lag, at)])
    assert [sample.lag_txids for sample in history.series()["acme/0"]] == [1, 2, 5]
    assert history.growing(points=3) == ["acme/0"]
    history.record([agent(0, 5.0)])
    assert history.growing(points=3) == []


def test_charts_escape_their_labels() -> None:
    bars = str(plots.bar_chart([("<script>", 1.5)], unit="s"))
    assert "<script>" not in bars and "&lt;script&gt;" in bars
    lines = str(plots.line_chart({"a<b": [(0.0, 1.0), (1.0, 2.0)]}, unit="txids"))
    assert "a&lt;b" in lines and "<polyline" in lines
    assert "no samples" in str(plots.line_chart({}, unit="txids"))


def test_growing_lag_is_an_alert_only_while_the_agent_runs(engine: Engine, tmp_path: Path) -> None:
    with Session(engine) as session:
        session.add(Tenant(name="acme", agents=2))
        session.add(Agent(id="acme/0", tenant="acme", ordinal=0, state=AgentState.running))
        session.add(Agent(id="acme/1", tenant="acme", ordinal=1, state=AgentState.retained))
        session.commit()
    with fleet_app(engine, tmp_path) as client:
        client.headers.update(AUTH)
        history = LagHistory()
        for step in range(5):
            history.record([agent(step, float(step + 1))])
            history.record([agent(step, float(step + 1)).model_copy(update={"ordinal": 1})])
        client.app.state.lag_history = history  # type: ignore[attr-defined]
        page = client.get("/ui")
    assert "alert-lag_growing" in page.text
    assert "acme/0: lag grew" in page.text and "acme/1: lag grew" not in page.text
    assert "<polyline" in page.text  # the lag chart plots what was sampled


# -- a tenant's workflows (from the observer) and replication -------------------------------------------------------


def test_tenant_page_workflows_by_status_and_store_side_replication(engine: Engine, tmp_path: Path) -> None:
    add_tenant(engine, "acme", {0: (AgentState.running, 1), 1: (AgentState.running, 2), 2: (AgentState.running, 1)})
    with Session(engine) as session:
        session.execute(
            update(Agent)
            .where(col(Agent.id) == "acme/0")
            .values(replication="stalled", local_txid=50, store_txid=41, synced_at=time.time() - 70)
        )
        session.execute(update(Agent).where(col(Agent.id) == "acme/1").values(replication="ok"))
        session.commit()
    observer = FakeObserver(
        copies={
            ("acme", 0): (1, [info("a"), info("b"), info("bad", "ERROR", error="boom")]),
            ("acme", 1): (2, [info("c"), info("stuck", "BLOCKED")]),
            ("acme", 2): (1, [info("not-counted")]),  # its generation is not followed: named, not counted
        }
    )
    observer.follows = {AgentRef("acme", 0, 1): CopyKind.follow, AgentRef("acme", 1, 2): CopyKind.periodic}
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(state_dir=tmp_path, database_url=url, api_token=TOKEN)
    with TestClient(create_app(settings, background=False, observer=observer)) as client:  # type: ignore[arg-type]
        page = client.get("/ui/tenants/acme", headers=AUTH)
        tenant = client.get("/v1/tenants/acme", headers=AUTH).json()
    assert page.status_code == 200
    workflows = page.text.split('id="workflows"')[1]
    for badge in ("3 SUCCESS", "1 ERROR", "1 BLOCKED"):
        assert badge in workflows
    problems = workflows.split('id="problem-workflows"')[1]
    assert "bad" in problems and "ValueError: boom" in problems and "stuck" in problems and ">a<" not in problems
    assert "agent 2: gen 1 not followed yet" in workflows
    assert 'id="tenant-replication">replication stalled' in page.text
    assert tenant["replication"] == "stalled"
    placements = {agent["ordinal"]: agent for agent in tenant["placements"]}
    assert (placements[0]["replica_txid"], placements[0]["local_txid"], placements[0]["lag_txids"]) == (41, 50, 9)
    assert placements[0]["lag_seconds"] >= 70 and placements[1]["replication"] == "ok"
    assert placements[2]["replication"] == "unknown"


def test_each_nodes_warm_pool_shows_on_the_overview_and_in_the_api(api: TestClient, engine: Engine) -> None:
    from control_plane.reconciler.pool import claim_node, finish_node

    token = claim_node(engine, "n2", lease=60)
    assert token is not None and finish_node(engine, "n2", token, size=2, ready=1, memory_mb=256)
    node = api.get("/v1/nodes/n2", headers=AUTH).json()
    assert (node["pool_size"], node["pool_ready"]) == (2, 1)
    assert not {"pool_lock_token", "pool_locked_until", "pool_memory_mb"} & set(node)
    sign_in(api)
    page = api.get("/ui").text
    assert "warm pool ready / size" in page and '<td class="num pool">1 / 2</td>' in page
