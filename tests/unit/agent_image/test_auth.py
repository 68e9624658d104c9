"""Agent API authentication (issue 10): every route but /healthz needs a bearer token; /admin/* the admin one."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from agent_image import Runtime
from agent_image.server import create_app
from agent_image.server._auth import Tokens, bearer, is_loopback
from tests.unit.agent_image import features_bundle
from tests.unit.agent_image.agent_process import free_port, serve, wait_ready
from tests.unit.agent_image.test_identity import SECRETS

AGENT, ADMIN = SECRETS.agent_token, SECRETS.admin_token


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(lambda: Runtime(str(tmp_path / "agent.db"), features_bundle), tokens=Tokens(AGENT, ADMIN))
    with TestClient(app) as test_client:
        yield test_client
    features_bundle.gate.set()


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


ROUTES = [
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/workflows"),
    ("POST", "/v1/workflows/pipeline"),
    ("GET", "/v1/workflows/x"),
    ("GET", "/v1/workflows/x/steps"),
    ("POST", "/v1/workflows/x/cancel"),
    ("POST", "/v1/workflows/x/fork?from_step=1"),
    ("POST", "/v1/workflows/x/messages/inbox"),
    ("GET", "/v1/workflows/x/events/k"),
    ("POST", "/admin/drain"),
    ("GET", "/docs"),  # unknown paths too: no route map for strangers
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": f"Bearer {AGENT[:-1]}"},
        {"authorization": f"Bearer {AGENT}x"},
        {"authorization": f"Basic {AGENT}"},
        {"authorization": "Bearer "},
        {"authorization": AGENT},
        {"x-token": AGENT},
    ],
    ids=["none", "prefix", "longer", "basic", "empty", "no-scheme", "other-header"],
)
def test_every_route_but_healthz_refuses_without_a_valid_token(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=headers, json={})
    assert response.status_code == 401, response.text
    assert response.json() == {
        "code": "unauthorized",
        "message": "a valid 'Authorization: Bearer <token>' header is required",
    }
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert AGENT not in response.text and ADMIN not in response.text


def test_healthz_is_open(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_agent_token_opens_v1_readyz_and_metrics_but_not_admin(client: TestClient) -> None:
    headers = auth(AGENT)
    assert client.get("/readyz", headers=headers).status_code == 200
    assert client.get("/metrics", headers=headers).status_code == 200
    created = client.post("/v1/workflows/pipeline", json={"id": "a1", "args": [1]}, headers=headers)
    assert created.status_code == 201
    assert client.get("/v1/workflows/a1", params={"wait": 5}, headers=headers).json()["status"] == "SUCCESS"
    refused = client.post("/admin/drain", headers=headers)
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    assert client.get("/readyz", headers=headers).json()["draining"] is False


def test_the_admin_token_opens_admin_and_v1(client: TestClient) -> None:
    headers = auth(ADMIN)
    assert client.post("/v1/workflows/pipeline", json={"id": "b1", "args": [1]}, headers=headers).status_code == 201
    assert client.post("/admin/drain", headers=headers).json()["draining"] is True
    assert client.get("/nowhere", headers=headers).json()["code"] == "not_found"  # known callers see real 404s


def test_the_scheme_is_case_insensitive_and_tokens_are_matched_exactly() -> None:
    assert bearer([(b"Authorization", b"bearer  abc ")]) == "abc"
    tokens = Tokens("a" * 16, "b" * 16)
    assert tokens.role("a" * 16) == "agent" and tokens.role("b" * 16) == "admin"
    assert tokens.role("a" * 15) is None and tokens.role(None) is None and tokens.role("") is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False)],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_standalone_agent_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    agent = serve(tmp_path / "agent.db", free_port(), "tenants.hello", LITEFLEET_AGENT_HOST="0.0.0.0")
    try:
        assert agent.wait(30) == 2
    finally:
        agent.kill()
    assert agent.stderr is not None
    lines = [line for line in agent.stderr.read().splitlines() if line.startswith("litefleet-agent:")]
    assert lines == ["litefleet-agent: no_token: refusing to serve on 0.0.0.0 without tokens (give --secrets-file)"]


def test_a_standalone_agent_with_a_secrets_file_requires_its_token(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(SECRETS.to_json())
    port = free_port()
    agent = serve(tmp_path / "agent.db", port, "tenants.hello", LITEFLEET_SECRETS_FILE=str(secrets))
    try:
        wait_ready(port, agent, headers=auth(AGENT))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/workflows").status_code == 401
        assert httpx.get(f"{url}/v1/workflows", headers=auth(AGENT)).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        agent.terminate()
        agent.wait(20)


def test_a_loopback_agent_without_a_token_warns_once(tmp_path: Path) -> None:
    port = free_port()
    agent = serve(tmp_path / "agent.db", port)
    try:
        wait_ready(port, agent)
        httpx.get(f"http://127.0.0.1:{port}/v1/workflows")
        httpx.get(f"http://127.0.0.1:{port}/v1/workflows")
    finally:
        agent.terminate()
        agent.wait(20)
    output = (agent.stdout.read() if agent.stdout else "") + (agent.stderr.read() if agent.stderr else "")
    assert output.count("agent.unauthenticated") == 1


def test_bad_secrets_file_is_one_line_exit_2(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"agent_token": "short"}')
    agent = serve(tmp_path / "agent.db", free_port(), "tenants.hello", LITEFLEET_SECRETS_FILE=str(secrets))
    try:
        assert agent.wait(30) == 2
    except subprocess.TimeoutExpired:
        agent.kill()
        raise
    assert agent.stderr is not None
    assert agent.stderr.read().strip().splitlines()[-1].startswith("litefleet-agent: bad_secrets: secrets field")
