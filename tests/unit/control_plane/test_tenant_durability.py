"""A tenant's default durability (`?durability=` of its agents): validated, stored, shown, and handed to every
incarnation's container (LITEFLEET_DURABILITY), so a client's plain start is acknowledged only once replicated."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from agent_image.contract import DURABILITY
from control_plane.db.models import TenantCreate
from control_plane.services import tenants
from tests.unit.control_plane.test_api import client
from tests.unit.control_plane.test_crash_operations import assert_converged, new_world


def test_the_api_validates_stores_and_shows_a_tenants_durability(engine: Engine, tmp_path: Path) -> None:
    api = client(engine, tmp_path)
    api.app.state.probe_engine = lambda body: ["runc"]  # type: ignore[attr-defined]
    assert api.post("/v1/nodes", json={"name": "n1", "engine_url": "unix:///x"}).status_code == 201

    wrong = api.post("/v1/tenants", json={"name": "acme", "durability": "eventually"})
    assert (wrong.status_code, wrong.json()["code"]) == (422, "invalid_request")
    assert api.get("/v1/tenants").json()["items"] == []  # refused: nothing changed

    assert api.post("/v1/tenants", json={"name": "acme", "durability": "replicated"}).status_code == 202
    assert api.post("/v1/tenants", json={"name": "globex"}).status_code == 202
    shown = {tenant["name"]: tenant["durability"] for tenant in api.get("/v1/tenants").json()["items"]}
    assert shown == {"acme": "replicated", "globex": "local"}


def test_every_incarnation_of_a_replicated_tenant_starts_with_that_default(engine: Engine) -> None:
    world = new_world(engine)
    with Session(engine) as session:
        op = tenants.create_tenant(session, TenantCreate(name="acme", agents=2, durability="replicated")).id
    world.run(op)
    assert_converged(world, op, running=2)
    containers = [c for engine_ in world.engines.drivers.values() for c in engine_.containers.values()]
    assert len(containers) == 2
    assert {c.spec.environment()[DURABILITY] for c in containers} == {"replicated"}
