"""The API without engines: authentication, validation and refusals that change nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from control_plane.app import MAX_BODY_BYTES, create_app
from control_plane.settings import Settings, TokenRefused, api_token


def client(engine: Engine, tmp_path: Path, **settings: object) -> TestClient:
    """The API with the token it generated (or was given) sent on every request."""
    url = engine.url.render_as_string(hide_password=False)
    config = Settings(state_dir=tmp_path, database_url=url, **settings)  # type: ignore[arg-type]
    app = create_app(config, background=False, engine=engine)
    return TestClient(app, headers={"authorization": f"Bearer {api_token(config, create=False)}"})


TOKEN = "s3cret-token-of-24-chars-or-more"


def test_a_token_guards_every_route_but_healthz(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path, api_token=TOKEN)
    for path in ("/v1/nodes", "/v1/tenants", "/v1/operations", "/docs", "/openapi.json"):
        refused = api.get(path, headers={"authorization": ""})
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized", path
        assert TOKEN not in refused.text
        assert api.get(path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert api.get(path).status_code == 200, path
    assert api.get("/v1/nodes").json() == {"items": [], "next_cursor": None}
    assert api.get("/healthz", headers={"authorization": ""}).status_code == 200


def test_without_a_token_the_api_makes_one_into_a_private_file(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path)  # no LITEFLEET_API_TOKEN: never open, not even on loopback
    assert api.get("/v1/nodes", headers={"authorization": ""}).status_code == 401
    assert api.get("/v1/nodes").status_code == 200  # with the token read back from the file
    token_file = tmp_path / "api-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(token_file.read_text()) >= 24
    again = client(engine, tmp_path)  # a restart keeps the same token
    assert again.headers["authorization"] == api.headers["authorization"]


@pytest.mark.parametrize("token", ["", "short", "x" * 23])
def test_empty_or_short_tokens_are_refused_at_start(engine: Engine, tmp_path: Path, token: str) -> None:
    with pytest.raises(TokenRefused, match="at least 24"):
        client(engine, tmp_path, api_token=token, api_host="0.0.0.0")


NODE = {"name": "n1", "engine_url": "unix:///x"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/tenants", {"name": "Bad_Name"}, 422, "invalid_request"),
        ("POST", "/v1/tenants", {"name": "acme", "agents": 65}, 422, "invalid_request"),
        ("POST", "/v1/tenants", {"name": "acme", "memory_mb": 1}, 422, "invalid_request"),
        ("POST", "/v1/tenants", {"name": "acme", "agents": 1}, 409, "no_capacity"),
        ("POST", "/v1/tenants/acme/scale", {"agents": 2}, 404, "tenant_not_found"),
        ("POST", "/v1/tenants/acme/scale", {"agents": -1}, 422, "invalid_request"),
        ("POST", "/v1/nodes/nowhere/drain", None, 404, "node_not_found"),
        ("POST", "/v1/nodes", {"name": "n1", "engine_url": "tcp://127.0.0.1:9"}, 422, "engine_unreachable"),
        ("POST", "/v1/nodes", {"name": "n1", "engine_url": "tcp://10.1.2.3:2375"}, 422, "insecure_engine_url"),
        ("POST", "/v1/nodes", {"name": "n1", "engine_url": "http://10.1.2.3:2375"}, 422, "engine_url_scheme"),
        (
            "POST",
            "/v1/nodes",
            {"name": "n1", "engine_url": "tcp://10.1.2.3:2376", "tls": "nope"},
            422,
            "engine_tls_invalid",
        ),
        ("POST", "/v1/nodes", {"name": "n1", "engine_url": "tcp://h:2376", "tls": "../../etc"}, 422, "invalid_request"),
        ("POST", "/v1/tenants", {"name": "acme", "bundle": "os"}, 422, "unknown_bundle"),
        ("POST", "/v1/tenants", {"name": "acme", "bundle": "/etc/passwd"}, 422, "unknown_bundle"),
        (
            "POST",
            "/v1/nodes",
            {**NODE, "capacity_memory_mb": 2**63},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/nodes",
            {**NODE, "capacity_agents": 2**63},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/nodes",
            {**NODE, "address": "http://h/x"},
            422,
            "invalid_request",
        ),
        ("POST", "/v1/nodes", {**NODE, "address": "a" * 101}, 422, "invalid_request"),
        (
            "POST",
            "/v1/nodes",
            {**NODE, "labels": {f"k{i}": "v" for i in range(33)}},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/nodes",
            {**NODE, "labels": {"Bad Key": "v"}},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/nodes",
            {**NODE, "labels": {"k": "x" * 64}},
            422,
            "invalid_request",
        ),
        ("GET", "/v1/operations/nope", None, 404, "operation_not_found"),
        ("GET", "/v1/operations?state=exploded", None, 422, "invalid_request"),
        ("GET", "/v1/tenants/acme/workflows/w1", None, 404, "tenant_not_found"),
        ("POST", "/v1/tenants/acme/evacuate", {"strategy": "lukewarm"}, 422, "invalid_request"),
        ("POST", "/v1/nodes/n1/drain?strategy=lukewarm", None, 422, "invalid_request"),
    ],
)
def test_bad_requests_get_a_code_and_a_message_and_change_nothing(
    engine: Engine, tmp_path: Path, method: str, path: str, body: object, status: int, code: str
) -> None:
    api = client(engine, tmp_path)
    answer = api.request(method, path, json=body)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.json()["message"] and "Traceback" not in answer.text
    assert api.get("/v1/tenants").json()["items"] == [] and api.get("/v1/nodes").json()["items"] == []
    assert api.get("/v1/operations").json()["items"] == []


def test_bodies_past_the_limit_and_bodies_that_are_not_json_get_the_envelope(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path)
    huge = api.post("/v1/tenants", content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}")
    assert (huge.status_code, huge.json()["code"]) == (413, "body_too_large")
    for raw in (b"\xff\xfe not utf-8", b'{"name": "acme"', b"[" * 5000):
        answer = api.post("/v1/tenants", content=raw, headers={"content-type": "application/json"})
        assert answer.status_code in (400, 422) and answer.json()["code"] == "invalid_request", answer.text
    assert api.get("/v1/tenants").json()["items"] == []
    unknown = api.get("/v1/no-such-thing")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    wrong_method = api.put("/v1/tenants")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")


def test_parallel_creates_of_one_tenant_answer_one_operation_and_conflicts(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path)
    api.app.state.probe_engine = lambda node: None  # type: ignore[attr-defined]
    assert api.post("/v1/nodes", json={"name": "n1", "engine_url": "unix:///x"}).status_code == 201
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: api.post("/v1/tenants", json={"name": "acme", "agents": 1}), range(20)))
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [202] + [409] * 19, [answer.text for answer in answers if answer.status_code not in (202, 409)]
    assert {answer.json()["code"] for answer in answers if answer.status_code == 409} == {"tenant_exists"}
    assert len(api.get("/v1/operations").json()["items"]) == 1
