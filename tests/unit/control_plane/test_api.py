"""The API without engines: authentication, validation and refusals that change nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from control_plane.app import create_app
from control_plane.settings import Settings


def client(engine: Engine, tmp_path: Path, **settings: object) -> TestClient:
    url = engine.url.render_as_string(hide_password=False)
    return TestClient(create_app(Settings(state_dir=tmp_path, database_url=url, **settings), background=False))


def test_a_token_guards_every_v1_route_but_not_healthz(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path, api_token="s3cret-token")
    refused = api.get("/v1/nodes")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
    assert "s3cret-token" not in refused.text
    assert api.get("/v1/nodes", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/v1/nodes", headers={"authorization": "Bearer s3cret-token"}).json() == []
    assert api.get("/healthz").status_code == 200


def test_serving_beyond_loopback_needs_a_token(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LITEFLEET_API_TOKEN"):
        client(engine, tmp_path, api_host="0.0.0.0")


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
        ("GET", "/v1/operations/nope", None, 404, "operation_not_found"),
        ("GET", "/v1/operations?state=exploded", None, 422, "invalid_request"),
        ("GET", "/v1/tenants/acme/workflows/w1", None, 404, "tenant_not_found"),
    ],
)
def test_bad_requests_get_a_code_and_a_message_and_change_nothing(
    engine: Engine, tmp_path: Path, method: str, path: str, body: object, status: int, code: str
) -> None:
    api = client(engine, tmp_path)
    answer = api.request(method, path, json=body)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.json()["message"] and "Traceback" not in answer.text
    assert api.get("/v1/tenants").json() == [] and api.get("/v1/nodes").json() == []
    assert api.get("/v1/operations").json() == []
