"""Tenant API tokens (issue 10): created, listed and revoked by the admin, stored hashed; a token reaches its own
tenant and that tenant's workflows and nothing else. Every route of the real app is walked (`app.routes`), so a
route added later is refused to tenants until it is added to TENANT_ROUTES on purpose."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from agent_image.contract import AgentSecrets
from control_plane.app import create_app
from control_plane.db.models import Agent, AgentState, ApiToken, Tenant, TenantState
from control_plane.settings import Settings
from tests.unit.agent_image.agent_process import free_port, serve, wait_ready

ADMIN = "admin-token-for-the-token-tests-0123"
ACME, GLOBEX = "acme", "globex"

# The only routes a tenant token may use (with its own tenant's name); every other route is the admin's.
TENANT_ROUTES = {
    ("GET", "/v1/tenants/{name}"),
    ("POST", "/v1/tenants/{name}/workflows/{workflow}"),
    ("GET", "/v1/tenants/{name}/workflows/{workflow_id}"),
    ("GET", "/v1/tenants/{name}/workflows"),
    ("GET", "/v1/tenants/{name}/history"),
    ("GET", "/v1/tenants/{name}/history/{workflow_id}"),
}
# Open without a token: the liveness probe, and the dashboard's way in (they show no fleet data).
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/"), ("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout")}
QUERY = {"at": "2026-01-01T00:00:00"}  # the one required query parameter (history)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    """The real app (no background workers) with two tenants, as rows: no engine is needed to authorise."""
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(Settings(state_dir=tmp_path, database_url=url, api_token=ADMIN), background=False)  # type: ignore[arg-type]
    with Session(engine) as session:
        session.add_all([Tenant(name=ACME), Tenant(name=GLOBEX)])
        session.commit()
    with TestClient(app, headers=auth(ADMIN)) as client:
        yield client


def create(api: TestClient, tenant: str, name: str = "") -> dict[str, str]:
    answer = api.post(f"/v1/tenants/{tenant}/tokens", json={"name": name})
    assert answer.status_code == 201, answer.text
    created: dict[str, str] = answer.json()
    return created


def routes(api: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, through included routers too."""
    app = api.app
    assert isinstance(app, FastAPI)
    walk = getattr(fastapi.routing, "iter_route_contexts", iter)  # FastAPI >= 0.165 includes routers lazily
    found = []
    for route in walk(app.routes):
        assert route.path and route.methods, f"a route without path or methods: walk {route!r} here too"
        for method in sorted(route.methods):
            if method != "HEAD":  # Starlette's HEAD is the GET route's
                found.append((method, route.path))
    assert len(found) == len(set(found)) > 30
    return found


def concrete(path: str, tenant: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path.replace("{name}", tenant))


def is_dashboard(path: str) -> bool:
    return path == "/" or path.startswith("/ui")


def test_the_admin_creates_lists_and_revokes_tokens_and_only_a_hash_is_kept(api: TestClient, engine: Engine) -> None:
    created = create(api, ACME, "ci")
    token = created["token"]
    assert token.startswith(f"lft_{created['id']}_") and len(token) >= 50
    assert (created["tenant"], created["name"], created["revoked_at"]) == (ACME, "ci", None)
    listed = api.get(f"/v1/tenants/{ACME}/tokens").json()
    assert listed == [{key: value for key, value in created.items() if key != "token"}]
    assert api.get(f"/v1/tenants/{GLOBEX}/tokens").json() == []
    with Session(engine) as session:
        row = session.get(ApiToken, created["id"])
        assert row is not None and row.secret_sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert token not in repr(row) and row.secret_sha256 not in repr(row)
    assert api.get(f"/v1/tenants/{ACME}", headers=auth(token)).status_code == 200

    assert api.delete(f"/v1/tenants/{GLOBEX}/tokens/{created['id']}").json()["code"] == "token_not_found"
    assert api.delete(f"/v1/tenants/{ACME}/tokens/{created['id']}").status_code == 204
    assert api.delete(f"/v1/tenants/{ACME}/tokens/{created['id']}").status_code == 204  # idempotent
    assert api.delete(f"/v1/tenants/{ACME}/tokens/nope").status_code == 404
    [revoked] = api.get(f"/v1/tenants/{ACME}/tokens").json()
    assert revoked["revoked_at"] is not None
    kinds = [event["kind"] for event in api.get("/v1/events", params={"tenant": ACME}).json()["items"]]
    assert kinds == ["token.revoked", "token.created"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/tenants/nobody/tokens", {}, 404, "tenant_not_found"),
        (f"/v1/tenants/{ACME}/tokens", {"name": "x" * 61}, 422, "invalid_request"),
        (f"/v1/tenants/{ACME}/tokens", {"name": 3}, 422, "invalid_request"),
    ],
)
def test_bad_token_requests_get_the_envelope_and_make_nothing(
    api: TestClient, path: str, body: object, status: int, code: str
) -> None:
    answer = api.post(path, json=body)
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert api.get(f"/v1/tenants/{ACME}/tokens").json() == []


def test_a_tenant_token_reaches_its_own_tenant_and_nothing_else_on_any_route(api: TestClient) -> None:
    acme = create(api, ACME)["token"]
    every = routes(api)
    assert set(TENANT_ROUTES) <= set(every), "a tenant route was renamed: update TENANT_ROUTES"
    checked = 0
    for method, path in every:
        if (method, path) in OPEN_ROUTES:
            continue
        for tenant in (GLOBEX, "no-such-tenant", ACME):
            answer = api.request(
                method, concrete(path, tenant), params=QUERY, headers=auth(acme), follow_redirects=False
            )
            where = f"{method} {concrete(path, tenant)}: {answer.status_code} {answer.text[:200]}"
            if is_dashboard(path):  # the dashboard is the admin's: a tenant token is no session
                assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login"), where
            elif (method, path) not in TENANT_ROUTES:
                assert (answer.status_code, answer.json()["code"]) == (403, "forbidden"), where
            elif tenant != ACME:  # another tenant's routes: the answer a missing tenant gets
                assert (answer.status_code, answer.json()["code"]) == (404, "tenant_not_found"), where
            else:  # its own: past authorisation (no agent runs here, so 503 no_agent_running and the like)
                assert answer.status_code not in (401, 403), where
                assert answer.json().get("code") != "tenant_not_found", where
            checked += 1
    assert checked > 3 * 30


def test_without_a_valid_token_every_route_but_healthz_is_refused(api: TestClient) -> None:
    acme = create(api, ACME)
    forged = f"lft_{acme['id']}_" + "A" * 43
    for method, path in routes(api):
        if (method, path) in OPEN_ROUTES:
            continue
        for headers in (
            {"authorization": ""},
            auth(""),
            auth(forged),
            auth(acme["token"][:-1]),
            auth(f"lft_{acme['id']}_"),
            auth("lft_' OR 1=1 --_x"),
            auth(ADMIN[:-1]),
            {"authorization": f"Basic {ADMIN}"},
            {"authorization": acme["token"]},
        ):
            answer = api.request(method, concrete(path, ACME), headers=headers, params=QUERY, follow_redirects=False)
            where = f"{method} {path} {headers}: {answer.status_code}"
            if is_dashboard(path):
                assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login"), where
            else:
                assert (answer.status_code, answer.json()["code"]) == (401, "unauthorized"), where
    assert api.get("/healthz", headers={"authorization": ""}).status_code == 200


def test_a_tenant_token_cannot_sign_in_to_the_dashboard(api: TestClient) -> None:
    acme = create(api, ACME)["token"]
    answer = api.post("/ui/login", data={"token": acme}, headers={"authorization": ""}, follow_redirects=False)
    assert "set-cookie" not in answer.headers


def test_a_revoked_token_is_refused_at_once_by_every_control_plane_on_the_db(
    api: TestClient, engine: Engine, tmp_path: Path
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(state_dir=tmp_path / "second", database_url=url, api_token=ADMIN)  # type: ignore[arg-type]
    with TestClient(create_app(settings, background=False)) as second:  # another replica over the same fleet DB
        created = create(api, ACME)
        for replica in (api, second):
            assert replica.get(f"/v1/tenants/{ACME}/workflows", headers=auth(created["token"])).status_code == 503
        assert api.delete(f"/v1/tenants/{ACME}/tokens/{created['id']}").status_code == 204
        for replica in (api, second):
            refused = replica.get(f"/v1/tenants/{ACME}", headers=auth(created["token"]))
            assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
        other = create(api, ACME)  # revoking one token leaves the tenant's others working
        assert second.get(f"/v1/tenants/{ACME}", headers=auth(other["token"])).status_code == 200


def test_a_deleted_tenants_tokens_never_work_again_not_even_for_a_new_tenant_of_that_name(
    api: TestClient, engine: Engine
) -> None:
    token = create(api, ACME)["token"]
    with Session(engine) as session:
        tenant = session.get(Tenant, ACME)
        assert tenant is not None
        tenant.state = TenantState.deleting  # what DELETE /v1/tenants/acme does first
        session.add(tenant)
        session.commit()
    assert api.get(f"/v1/tenants/{ACME}", headers=auth(token)).status_code == 401
    assert api.post(f"/v1/tenants/{ACME}/tokens", json={}).json()["code"] == "tenant_not_active"
    with Session(engine) as session:  # the delete operation drops the row; a new tenant takes the name
        session.delete(session.get(Tenant, ACME))
        session.commit()
        session.add(Tenant(name=ACME))
        session.commit()
        assert len(session.exec(select(ApiToken)).all()) == 1  # even if its rows were left behind
    assert api.get(f"/v1/tenants/{ACME}", headers=auth(token)).status_code == 401


def secret_of(token: str) -> str:
    """The secret part of `lft_<id>_<secret>` (the secret itself may hold underscores: token_urlsafe)."""
    return token.removeprefix("lft_").partition("_")[2]


def test_secrets_appear_only_in_the_creation_answer_and_never_in_logs(
    api: TestClient, engine: Engine, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    created = create(api, ACME, "leak-check")
    token = created["token"]
    secret_part = secret_of(token)
    digest = hashlib.sha256(token.encode()).hexdigest()
    revoked = create(api, ACME)
    api.delete(f"/v1/tenants/{ACME}/tokens/{revoked['id']}")
    seen = []
    for method, path in routes(api):
        if "stream" in path:  # server-sent events never end; their pages carry the same data
            continue
        for headers in (auth(ADMIN), auth(token), auth(revoked["token"])):
            answer = api.request(method, concrete(path, ACME), headers=headers, params=QUERY, follow_redirects=False)
            seen.append(answer.text + str(answer.headers))
    assert len(seen) > 50
    for text in seen:
        for secret in (secret_part, secret_of(revoked["token"]), digest):
            assert secret not in text
    out, err = capfd.readouterr()
    for secret in (secret_part, secret_of(revoked["token"]), digest):
        assert secret not in out + err + caplog.text


def test_a_tenant_token_runs_its_workflows_on_a_real_agent_and_cannot_see_another_tenants(
    api: TestClient, engine: Engine, tmp_path: Path
) -> None:
    """The router's real path: a `litefleet-agent serve` process (with its own agent token) behind acme's row."""
    secrets_file = tmp_path / "secrets.json"
    agent_secrets = AgentSecrets("agent-token-of-acme-0123456789", "admin-token-of-acme-0123456789")
    secrets_file.write_text(agent_secrets.to_json())
    port = free_port()
    agent = serve(tmp_path / "agent.db", port, "tenants.hello", LITEFLEET_SECRETS_FILE=str(secrets_file))
    try:
        wait_ready(port, agent, headers=auth(agent_secrets.agent_token))
        with Session(engine) as session:
            session.add(
                Agent(
                    id=f"{ACME}/0",
                    tenant=ACME,
                    ordinal=0,
                    generation=1,
                    node="n1",
                    state=AgentState.running,
                    url=f"http://127.0.0.1:{port}",
                    agent_token=agent_secrets.agent_token,
                )
            )
            session.commit()
        acme, globex = create(api, ACME)["token"], create(api, GLOBEX)["token"]
        started = api.post(
            f"/v1/tenants/{ACME}/workflows/greet", json={"args": ["ada"], "id": "w1"}, headers=auth(acme)
        )
        assert started.status_code in (200, 201, 202), started.text
        found = api.get(f"/v1/tenants/{ACME}/workflows/w1", params={"wait": 10}, headers=auth(acme))
        assert (found.status_code, found.json()["status"], found.json()["result"]) == (200, "SUCCESS", "Hello, Ada!")
        assert api.get(f"/v1/tenants/{ACME}/workflows", headers=auth(acme)).json()["counts"]["SUCCESS"] == 1
        for method, path in (
            ("GET", f"/v1/tenants/{ACME}/workflows/w1"),
            ("GET", f"/v1/tenants/{ACME}/workflows"),
            ("POST", f"/v1/tenants/{ACME}/workflows/greet"),
            ("GET", f"/v1/tenants/{ACME}"),
        ):
            refused = api.request(method, path, json={"args": ["eve"]}, headers=auth(globex))
            assert (refused.status_code, refused.json()["code"]) == (404, "tenant_not_found"), path
            assert "Ada" not in refused.text
        assert api.get(f"/v1/tenants/{ACME}/workflows", headers=auth(acme)).json()["counts"]["SUCCESS"] == 1
    finally:
        agent.terminate()
        agent.wait(10)
