"""The agent HTTP API: in-process for the routes, and as a real `litefleet-agent serve` process for SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from agent_image import Runtime
from agent_image.server import create_app
from tests.unit.agent_image import features_bundle
from tests.unit.agent_image.agent_process import free_port, log_rows, serve, wait_ready


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(lambda: Runtime(str(tmp_path / "agent.db"), features_bundle))
    with TestClient(app) as test_client:
        yield test_client
    features_bundle.gate.set()


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True and ready.json()["bundle_version"] == "2"


def test_start_get_steps_and_idempotent_id(client: TestClient) -> None:
    created = client.post("/v1/workflows/pipeline", json={"id": "job-1", "args": [2]})
    assert created.status_code == 201
    done = client.get("/v1/workflows/job-1", params={"wait": 5}).json()
    assert done["status"] == "SUCCESS" and done["result"] == 16
    again = client.post("/v1/workflows/pipeline", json={"id": "job-1", "args": [2]})
    assert again.status_code == 200 and again.json()["id"] == "job-1"
    steps = client.get("/v1/workflows/job-1/steps").json()["steps"]
    assert [s["output"] for s in steps] == [4, 8, 16]
    listed = client.get("/v1/workflows", params={"status": "SUCCESS"}).json()
    assert [w["id"] for w in listed["workflows"]] == ["job-1"] and listed["counts"]["SUCCESS"] == 1


def test_messages_events_and_cancel(client: TestClient) -> None:
    client.post("/v1/workflows/listener", json={"id": "l1", "args": [30]})
    assert client.post("/v1/workflows/l1/messages/inbox", json={"hello": 1}).status_code == 202
    assert client.get("/v1/workflows/l1", params={"wait": 5}).json()["result"] == {"hello": 1}
    client.post("/v1/workflows/publisher", json={"id": "p1", "args": ["up"]})
    client.get("/v1/workflows/p1", params={"wait": 5})
    assert client.get("/v1/workflows/p1/events/status").json()["value"] == "up"
    client.post("/v1/workflows/listener", json={"id": "l2", "args": [30]})
    assert client.post("/v1/workflows/l2/cancel").json()["status"] == "CANCELLED"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/v1/workflows/nope", {}, 404, "unknown_workflow"),
        ("get", "/v1/workflows/missing", None, 404, "workflow_not_found"),
        ("post", "/v1/workflows/pipeline", {"args": "not-a-list"}, 422, "invalid_request"),
        ("post", "/v1/workflows/pipeline", {"id": "bad id!"}, 422, "invalid_request"),
        ("get", "/v1/workflows?status=WEIRD", None, 422, "invalid_request"),
        ("post", "/v1/workflows/missing/messages/inbox", {"x": 1}, 404, "workflow_not_found"),
        ("post", "/v1/workflows/missing/cancel", None, 404, "workflow_not_found"),
        ("post", "/v1/workflows/pipeline", {"args": [], "extra": 1}, 422, "invalid_request"),
        ("get", "/v1/workflows/x?wait=1000", None, 422, "invalid_request"),
        ("get", "/nowhere", None, 404, "not_found"),
        ("post", "/v1/workflows/missing/fork", None, 422, "invalid_request"),
        ("post", "/v1/workflows/missing/fork?from_step=0", None, 422, "invalid_request"),
        ("post", f"/v1/workflows/missing/fork?from_step=1&new_id={'a' * 10_000}", None, 422, "invalid_request"),
        ("post", "/v1/workflows/missing/fork?from_step=1&new_id=a/b", None, 422, "invalid_request"),
        ("post", "/v1/workflows/missing/fork?from_step=1&new_id=", None, 422, "invalid_request"),
        ("post", "/v1/workflows/missing/fork?from_step=1&new_id=ok-id", None, 404, "workflow_not_found"),
        ("post", "/v1/workflows/pipeline", {"id": "a" * 201}, 422, "invalid_request"),
    ],
)
def test_errors_are_json_with_a_stable_code(
    client: TestClient, method: str, path: str, body: object, status: int, code: str
) -> None:
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status
    assert response.json()["code"] == code and response.json()["message"]


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/workflows/pipeline", "[" * 100_000),
        ("/v1/workflows/pipeline", '{"args": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("/v1/workflows/pipeline", '{"args": [' + "[" * 500 + "]" * 500 + "]}"),
        ("/v1/workflows/x/messages/inbox", "[" * 100_000 + "]" * 100_000),
        ("/v1/workflows/pipeline", "\xff\xfe not utf-8"),
        ("/v1/workflows/pipeline", "{"),
    ],
)
def test_bodies_json_cannot_hold_are_a_stable_4xx(client: TestClient, path: str, raw: str) -> None:
    response = client.post(path, content=raw.encode("latin-1"), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request" and response.json()["message"]


def test_fork_checks_ids_by_the_same_rule_as_start(client: TestClient) -> None:
    client.post("/v1/workflows/pipeline", json={"id": "src", "args": [1]})
    client.get("/v1/workflows/src", params={"wait": 5})
    forked = client.post("/v1/workflows/src/fork", params={"from_step": 2, "new_id": "src.fork-1"})
    assert forked.status_code == 201 and forked.json()["id"] == "src.fork-1"
    assert client.get("/v1/workflows/src.fork-1", params={"wait": 5}).json()["status"] == "SUCCESS"
    again = client.post("/v1/workflows/src/fork", params={"from_step": 2, "new_id": "src.fork-1"})
    assert again.status_code == 409 and again.json()["code"] == "workflow_id_conflict"


def test_id_reused_for_another_workflow_is_a_conflict(client: TestClient) -> None:
    client.post("/v1/workflows/pipeline", json={"id": "x", "args": [1]})
    response = client.post("/v1/workflows/napper", json={"id": "x", "args": [0]})
    assert response.status_code == 409 and response.json()["code"] == "workflow_id_conflict"


def test_drain_reports_in_flight_and_refuses_new_work(client: TestClient) -> None:
    client.post("/v1/workflows/listener", json={"id": "l", "args": [30]})
    assert client.post("/admin/drain").json() == {"draining": True, "in_flight": 1}
    refused = client.post("/v1/workflows/pipeline", json={"args": [1]})
    assert refused.status_code == 503 and refused.json()["code"] == "draining"
    assert client.get("/readyz").status_code == 503


def test_metrics(client: TestClient) -> None:
    client.post("/v1/workflows/pipeline", json={"id": "m", "args": [1]})
    client.get("/v1/workflows/m", params={"wait": 5})
    text = client.get("/metrics").text
    assert 'litefleet_workflows{status="SUCCESS"} 1.0' in text
    assert "litefleet_agent_ready 1.0" in text


def test_real_server_sigterm_exits_cleanly_and_second_agent_is_refused(tmp_path: Path) -> None:
    db, port = tmp_path / "agent.db", free_port()
    agent = serve(db, port)
    try:
        wait_ready(port, agent)
        started = httpx.post(f"http://127.0.0.1:{port}/v1/workflows/count", json={"id": "c", "args": [50]})
        assert started.status_code == 201
        second = serve(db, free_port())
        assert second.wait(20) != 0
        assert second.stderr is not None
        assert second.stderr.read().strip().endswith("one agent runtime per database file")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(20) == 0
    finally:
        agent.kill()
    restarted = serve(db, port)
    try:
        wait_ready(port, restarted)
        done = httpx.get(f"http://127.0.0.1:{port}/v1/workflows/c", params={"wait": 10}).json()
        assert done["status"] == "SUCCESS" and done["result"] == sum(range(50))
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(20)


def test_a_second_agent_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """The one-runtime-per-file lock keys on the real file: a symlink to the database, or to its directory, is
    the same file (and a hard link is refused). The first agent holds the file with a workflow mid-run; after it
    is killed, step 1 of that workflow was checkpointed once."""
    db, port = tmp_path / "agent.db", free_port()
    (tmp_path / "link.db").symlink_to(db)
    (tmp_path / "linkdir").symlink_to(tmp_path)
    agent = serve(db, port)
    try:
        wait_ready(port, agent)
        httpx.post(f"http://127.0.0.1:{port}/v1/workflows/count", json={"id": "c", "args": [200, 0.01]})
        (tmp_path / "hard.db").hardlink_to(db)
        for alias in (tmp_path / "link.db", tmp_path / "linkdir" / "agent.db", tmp_path / "hard.db"):
            second = serve(alias, free_port())
            assert second.wait(20) != 0, f"a second agent started on {alias}"
            assert second.stderr is not None
            assert second.stderr.read().strip().endswith("one agent runtime per database file")
    finally:
        agent.kill()
        agent.wait(10)
    first_steps = log_rows(db, "SELECT count(*) FROM execution_log WHERE workflow_id='c' AND seq=1 AND kind='step'")
    assert first_steps == [(1,)], "step 1 was checkpointed by two runtimes"


def test_sigterm_answers_long_polls_at_once_and_parks_promptly(tmp_path: Path) -> None:
    """Kill point: SIGTERM while a client long-polls `?wait=60` on a running workflow. The poll must be answered
    at once with the current status, the workflow parks at its next step boundary, and the agent exits 0 well
    inside the control plane's 30 s stop timeout (uvicorn must not wait for the poll)."""
    db, port = tmp_path / "agent.db", free_port()
    agent = serve(db, port)
    answers: list[httpx.Response] = []
    try:
        wait_ready(port, agent)
        httpx.post(f"http://127.0.0.1:{port}/v1/workflows/count", json={"id": "c", "args": [2000, 0.02]})
        url = f"http://127.0.0.1:{port}/v1/workflows/c"
        poll = threading.Thread(target=lambda: answers.append(httpx.get(url, params={"wait": 60}, timeout=90)))
        poll.start()
        time.sleep(0.5)  # the poll is waiting inside the agent
        signalled, signalled_at = time.monotonic(), time.time()
        agent.send_signal(signal.SIGTERM)
        poll.join(5)
        answered = time.monotonic() - signalled
        assert not poll.is_alive(), "the long poll was not answered within 5 s of SIGTERM"
        assert agent.wait(10) == 0
        exited = time.monotonic() - signalled
    finally:
        agent.kill()
        agent.wait(10)
    assert answered < 3 and exited < 5, (answered, exited)
    assert answers[0].status_code == 200 and answers[0].json()["status"] == "RUNNING"
    after = log_rows(
        db, "SELECT count(*) FROM execution_log WHERE workflow_id='c' AND kind='step' AND at>?", signalled_at
    )
    assert after[0][0] <= 2, f"{after[0][0]} steps ran after SIGTERM: it did not park at the next boundary"
