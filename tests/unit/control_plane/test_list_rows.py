"""The list routes answer with rows the services build as plain dicts (`rows_answer`), not models: a page of 100
tenants with 400 agents costs half as much. Their bytes must be exactly what the public models give, built the other
way (an ORM row per item, through `get_tenant`, `node_public`, `operation_public`): a field added to a model, or an
order or a value type that drifts, fails here. On SQLite and on PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from control_plane.api.paging import page_answer, rows_answer
from control_plane.db import models
from control_plane.db.models import (
    Agent,
    AgentState,
    Node,
    NodePublic,
    NodeState,
    Operation,
    OperationKind,
    OperationPublic,
    OperationState,
    Page,
    Tenant,
    TenantPublic,
    TenantState,
)
from control_plane.services import nodes, operations, tenants

NOW = 1_800_000_000.0


@pytest.fixture
def fleet(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """A fleet DB with every kind of value a page shows: agents running (ok, lagging, no state yet), stopping and
    retained, with and without txids; a tenant without agents, a hibernated one on runsc; nodes with labels, TLS,
    no heartbeat yet; operations failed with a unicode error, nested params, two sharing one created_at."""
    monkeypatch.setattr(models.time, "time", lambda: NOW)  # an agent's lag_seconds is measured against now
    with Session(engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(table.delete())
        session.add_all(
            [
                Node(name="n1", engine_url="tcp://10.0.0.1:2376", address="10.0.0.1", labels={"zone": "a"}, tls="n1"),
                Node(name="n2", engine_url="unix:///run/d.sock", state=NodeState.cordoned, last_seen_at=NOW - 3.5),
                Node(name="n3", engine_url="ssh://n3", runtimes=["runc", "runsc"], pool_size=2, pool_ready=1),
                Tenant(name="acme", agents=3, created_at=NOW - 100),
                Tenant(name="beta", agents=0, cpus=2.0, memory_mb=512, created_at=NOW - 50),
                Tenant(name="gamma", agents=0, state=TenantState.hibernated, runtime="runsc", durability="replicated"),
                Tenant(name="zeta", agents=1),
            ]
        )
        session.add_all(
            [
                Agent(id="acme/0", tenant="acme", ordinal=0, generation=3, node="n1", state=AgentState.running,
                      url="http://10.0.0.1:8080", local_txid=120, store_txid=118, synced_at=NOW - 1.25,
                      store_checked_at=NOW - 0.5, replication="lagging", replication_note="2 txids behind",
                      unconfirmed_commits=2, probed_at=NOW - 1, ready=True, seconds_since_sync=1.2),
                Agent(id="acme/1", tenant="acme", ordinal=1, generation=1, node="n3", state=AgentState.running),
                Agent(id="acme/2", tenant="acme", ordinal=2, generation=2, node="n1", state=AgentState.stopping,
                      replication="ok", unconfirmed_commits=7),
                Agent(id="zeta/0", tenant="zeta", ordinal=0, generation=1, node=None, state=AgentState.retained,
                      local_txid=5, store_txid=9),
            ]
        )  # fmt: skip
        session.add_all(
            [
                Operation(id="op-a", kind=OperationKind.provision, tenant="acme", created_at=NOW - 10),
                Operation(id="op-b", kind=OperationKind.drain, node="n2", state=OperationState.failed,
                          error="engine n2 said: übel ✗", params={"plan": {"acme/0": {"node": "n1"}}},
                          created_at=NOW - 5),
                Operation(id="op-c", kind=OperationKind.scale, tenant="zeta", created_at=NOW - 5),
                Operation(id="op-d", kind=OperationKind.evacuate, tenant="acme", state=OperationState.succeeded,
                          result={"downtime_s": {"acme/0": 0.45}}, created_at=NOW - 1),
            ]
        )  # fmt: skip
        session.commit()
    return engine


def walk(
    rows_of: Callable[[str | None], tuple[list[dict[str, Any]], str | None]],
    model: type[BaseModel],
    built_of: Callable[[dict[str, Any]], BaseModel],
    key: str,
) -> list[str]:
    """Every page of a list, each answered from its rows and compared byte for byte with the same page built the
    other way (`built_of` an item, through the models); the items' keys in the order seen."""
    cursor, seen = None, []
    while True:
        items, next_cursor = rows_of(cursor)
        built = Page(items=[built_of(item) for item in items], next_cursor=next_cursor)
        assert rows_answer(items, next_cursor).body == page_answer(model, built).body
        seen += [item[key] for item in items]
        if next_cursor is None:
            return seen
        cursor = next_cursor


@pytest.mark.parametrize("limit", [1, 2, 100])
def test_a_tenant_page_is_byte_for_byte_what_the_models_give(fleet: Engine, limit: int) -> None:
    with Session(fleet) as session:
        seen = walk(
            lambda cursor: tenants.tenant_rows(session, limit, cursor),
            TenantPublic,
            lambda item: tenants.get_tenant(session, item["name"]),
            "name",
        )
    assert seen == ["acme", "beta", "gamma", "zeta"]


@pytest.mark.parametrize("limit", [1, 2, 100])
def test_a_node_page_is_byte_for_byte_what_the_models_give(fleet: Engine, limit: int) -> None:
    with Session(fleet) as session:
        seen = walk(
            lambda cursor: nodes.node_rows(session, limit, cursor),
            NodePublic,
            lambda item: nodes.node_public(session, session.exec(select(Node).where(Node.name == item["name"])).one()),
            "name",
        )
    assert seen == ["n1", "n2", "n3"]


@pytest.mark.parametrize(
    ("tenant", "state", "limit"), [(None, None, 1), (None, None, 3), ("acme", None, 1), (None, "failed", 5)]
)
def test_an_operation_page_is_byte_for_byte_what_the_models_give(
    fleet: Engine, tenant: str | None, state: str | None, limit: int
) -> None:
    with Session(fleet) as session:
        seen = walk(
            lambda cursor: operations.operation_rows(session, tenant, state, limit, cursor),
            OperationPublic,
            lambda item: operations.operation_public(
                session.exec(select(Operation).where(Operation.id == item["id"])).one()
            ),
            "id",
        )
    expected = {(None, None): ["op-d", "op-c", "op-b", "op-a"], ("acme", None): ["op-d", "op-a"]}
    assert seen == expected.get((tenant, state), ["op-b"]), "newest first; ties by id, descending, across pages"
