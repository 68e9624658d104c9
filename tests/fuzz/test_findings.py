"""500s found by hand next to the fuzz run (it runs on SQLite and never sent such text past validation), kept as
regression tests on SQLite and PostgreSQL: text the fleet DB or an agent URL cannot
take (a NUL character: PostgreSQL refuses it; an unpaired surrogate: UTF-8 cannot encode it) answered 500. It is
now refused at the edge, 422 `invalid_request`, for the path, the query and every string of a JSON body."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.app import create_app
from control_plane.db.models import Agent, AgentState, Node, Tenant
from control_plane.settings import Settings
from tests.unit.control_plane.conftest import engine  # noqa: F401  (SQLite, and PostgreSQL when CI sets it)

ADMIN = "admin-token-for-the-findings-01234"


@pytest.fixture
def api(engine: Engine, tmp_path: Path) -> TestClient:  # noqa: F811
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(Settings(state_dir=tmp_path, database_url=url, api_token=ADMIN), background=False, engine=engine)  # type: ignore[arg-type]
    with Session(engine) as session:
        session.add_all([Tenant(name="acme"), Node(name="n1", engine_url="unix:///nowhere")])
        session.add(
            Agent(id="acme/0", tenant="acme", ordinal=0, node="n1", state=AgentState.running, url="http://127.0.0.1:9")
        )
        session.commit()
    return TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/tenants/a%00b", None),
        ("GET", "/v1/nodes/a%00b", None),
        ("GET", "/v1/operations/a%00b", None),
        ("GET", "/v1/operations?tenant=a%00b", None),
        ("GET", "/v1/events?kind=%00", None),
        ("POST", "/v1/tenants/a%00b/scale", b'{"agents": 1}'),
        ("GET", "/v1/tenants/a%00b/tokens", None),
        ("GET", "/ui/tenants/a%00b", None),
        ("POST", "/v1/tenants/acme/tokens", b'{"name": "a\\u0000"}'),
        ("POST", "/v1/tenants/acme/evacuate", b'{"to_node": "a\\u0000"}'),
        ("POST", "/v1/tenants/acme/evacuate", b'{"to_node": "\\udcff"}'),
        ("POST", "/v1/tenants/acme/workflows/greet", b'{"id": "\\udcff"}'),
        ("POST", "/v1/tenants/acme/workflows/greet", b'{"args": [{"\\u0000": 1}]}'),
    ],
)
def test_text_no_database_or_url_can_take_is_refused_not_a_500(
    api: TestClient, method: str, path: str, body: bytes | None
) -> None:
    answer = api.request(method, path, content=body, headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request"), answer.text
    assert api.get("/v1/tenants/acme/tokens").json() == []


def test_ordinary_text_still_passes_and_the_body_still_reaches_the_route(api: TestClient) -> None:
    created = api.post("/v1/tenants/acme/tokens", json={"name": "ci ✓ déploiement"})
    assert created.status_code == 201 and created.json()["name"] == "ci ✓ déploiement"
    deep = b"[" * 5000  # refused by the route as before (the check above must not choke on it)
    nested = api.post("/v1/tenants/acme/workflows/greet", content=deep, headers={"content-type": "application/json"})
    assert nested.status_code in (400, 422) and nested.json()["code"] == "invalid_request"
