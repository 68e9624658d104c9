"""Every list route pages with a cursor (issue 14): a walk over all pages yields every row exactly once, in the
list's order, while rows are inserted between pages; a page costs a fixed number of SQL statements whatever the
fleet's size; bad paging input is a clear 422 (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from control_plane.api.paging import page_answer
from control_plane.app import create_app
from control_plane.db.models import (
    Agent,
    AgentState,
    Event,
    Node,
    Operation,
    OperationKind,
    Page,
    Tenant,
    TenantPublic,
    TenantState,
)
from control_plane.services import nodes, operations, tenants
from control_plane.settings import Settings, api_token

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
HYPOTHESIS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _wipe(engine: Engine) -> None:
    with Session(engine) as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(table.delete())
        session.commit()


def _add(engine: Engine, rows: list[Any]) -> None:
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()


def _walk(
    engine: Engine, page: Callable[[Session, int, str | None], Page[Any]], limit: int, between: list[list[Any]]
) -> list[Any]:
    """Every item of every page; before page k+1 is asked for, the rows of between[k] are inserted (another
    session: as a concurrent client would)."""
    seen: list[Any] = []
    cursor: str | None = None
    for k in range(10_000):
        with Session(engine) as session:
            answer = page(session, limit, cursor)
        assert len(answer.items) <= limit
        seen += answer.items
        if answer.next_cursor is None:
            return seen
        cursor = answer.next_cursor
        if k < len(between):
            _add(engine, between[k])
    raise AssertionError("the walk never ended")


def _check(seen: list[Any], before: list[Any], now: list[Any]) -> None:
    """No row twice; every row that was there before the walk began; in the list's order (as one query over
    everything gives it now)."""
    assert len(seen) == len(set(seen)), "a row came twice"
    assert set(before) <= set(seen), f"rows missed: {sorted(set(before) - set(seen))[:5]}"
    position = {key: i for i, key in enumerate(now)}
    assert [position[key] for key in seen] == sorted(position[key] for key in seen), "out of order"


@HYPOTHESIS
@given(
    first=st.sets(NAMES, max_size=30),
    later=st.lists(st.sets(NAMES, max_size=4), max_size=8),
    limit=st.integers(1, 7),
)
def test_walking_tenant_pages_yields_each_once_in_order_while_tenants_are_added(
    engine: Engine, first: set[str], later: list[set[str]], limit: int
) -> None:
    _wipe(engine)
    _add(engine, [Tenant(name=name, agents=1) for name in first])
    taken = set(first)
    between = []
    for names in later:
        fresh = names - taken
        taken |= fresh
        between.append([Tenant(name=name) for name in fresh])
    seen = [t.name for t in _walk(engine, tenants.list_tenants, limit, between)]
    with Session(engine) as session:
        now = list(session.exec(select(Tenant.name).order_by(col(Tenant.name))))
    _check(seen, sorted(first), now)


@HYPOTHESIS
@given(
    first=st.sets(NAMES, max_size=30),
    later=st.lists(st.sets(NAMES, max_size=4), max_size=8),
    limit=st.integers(1, 7),
)
def test_walking_node_pages_yields_each_once_in_order_while_nodes_are_added(
    engine: Engine, first: set[str], later: list[set[str]], limit: int
) -> None:
    _wipe(engine)
    _add(engine, [Node(name=name, engine_url="unix:///x") for name in first])
    taken = set(first)
    between = []
    for names in later:
        fresh = names - taken
        taken |= fresh
        between.append([Node(name=name, engine_url="unix:///x") for name in fresh])
    seen = [n.name for n in _walk(engine, nodes.list_nodes, limit, between)]
    with Session(engine) as session:
        now = list(session.exec(select(Node.name).order_by(col(Node.name))))
    _check(seen, sorted(first), now)


# created_at from a handful of values: many ties, which only the id breaks
TIMES = st.sampled_from([1.0, 2.0, 2.5, 3.0, 1e9 + 0.123456])


@HYPOTHESIS
@given(
    first=st.lists(TIMES, max_size=30),
    later=st.lists(st.lists(TIMES, max_size=4), max_size=8),
    limit=st.integers(1, 7),
    tenant=st.sampled_from([None, "acme"]),
)
def test_walking_operation_pages_yields_each_once_newest_first_while_operations_are_queued(
    engine: Engine, first: list[float], later: list[list[float]], limit: int, tenant: str | None
) -> None:
    _wipe(engine)
    made = [
        Operation(kind=OperationKind.scale, tenant=("acme", "globex")[i % 2], created_at=at)
        for i, at in enumerate(first)
    ]
    before = [op.id for op in made if tenant in (None, op.tenant)]
    _add(engine, made)
    between = [[Operation(kind=OperationKind.scale, tenant="acme", created_at=at) for at in times] for times in later]

    def page(session: Session, limit: int, cursor: str | None) -> Page[Any]:
        return operations.list_operations(session, tenant, None, limit, cursor)

    seen = [op.id for op in _walk(engine, page, limit, between)]
    with Session(engine) as session:
        query = select(Operation.id).order_by(col(Operation.created_at).desc(), col(Operation.id).desc())
        if tenant:
            query = query.where(Operation.tenant == tenant)
        now = list(session.exec(query))
    _check(seen, before, now)


@HYPOTHESIS
@given(first=st.integers(0, 40), later=st.lists(st.integers(0, 4), max_size=8), limit=st.integers(1, 7))
def test_walking_event_pages_yields_each_once_newest_first_while_events_happen(
    engine: Engine, first: int, later: list[int], limit: int
) -> None:
    _wipe(engine)
    _add(engine, [Event(kind="test", message=str(i)) for i in range(first)])
    with Session(engine) as session:
        before = list(session.exec(select(Event.id)))
    between = [[Event(kind="test", message="later") for _ in range(count)] for count in later]

    def page(session: Session, limit: int, cursor: str | None) -> Page[Any]:
        return operations.list_events(session, None, None, None, None, limit, cursor)

    seen = [e.id for e in _walk(engine, page, limit, between)]
    with Session(engine) as session:
        now = list(session.exec(select(Event.id).order_by(col(Event.id).desc())))
    _check(seen, before, now)


# -- statements per page ----------------------------------------------------------------------------------------


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _fleet(engine: Engine, size: int) -> None:
    """`size` nodes and tenants, each tenant with 4 agents on 4 nodes, an operation and an event each."""
    _wipe(engine)
    rows: list[Any] = [Node(name=f"n{i:03}", engine_url="unix:///x") for i in range(size)]
    for t in range(size):
        rows.append(Tenant(name=f"t{t:03}", agents=4))
        rows += [
            Agent(
                id=f"t{t:03}/{i}", tenant=f"t{t:03}", ordinal=i, node=f"n{(t + i) % size:03}", state=AgentState.running
            )
            for i in range(4)
        ]
        rows.append(Operation(kind=OperationKind.scale, tenant=f"t{t:03}"))
        rows.append(Event(kind="test", tenant=f"t{t:03}", node=f"n{t:03}"))
    _add(engine, rows)


LISTS: dict[str, Callable[[Session], Page[Any]]] = {
    "tenants": lambda s: tenants.list_tenants(s, 100),
    "nodes": lambda s: nodes.list_nodes(s, 100),
    "operations": lambda s: operations.list_operations(s, None, None, 100),
    "events": lambda s: operations.list_events(s, None, None, None, None, 100),
}


@pytest.mark.parametrize("listing", sorted(LISTS))
def test_a_page_costs_the_same_few_statements_whatever_the_fleet_size(engine: Engine, listing: str) -> None:
    counts = []
    for size in (4, 60):
        _fleet(engine, size)
        with Session(engine) as session, _statements(engine) as statements:
            page = LISTS[listing](session)
        assert len(page.items) >= min(size, 4)
        counts.append(len(statements))
    assert counts[0] == counts[1] <= 2, f"{listing}: {counts} statements for 4 and 60 rows (no query per row)"


def test_the_api_pages_and_refuses_bad_paging_input(engine: Engine, tmp_path: Path) -> None:
    _fleet(engine, 7)
    url = engine.url.render_as_string(hide_password=False)
    config = Settings(state_dir=tmp_path, database_url=url)
    api = TestClient(
        create_app(config, background=False, engine=engine),
        headers={"authorization": f"Bearer {api_token(config, create=False)}"},
    )
    first = api.get("/v1/tenants", params={"limit": 3}).json()
    assert [t["name"] for t in first["items"]] == ["t000", "t001", "t002"] and first["next_cursor"]
    assert [p["ordinal"] for p in first["items"][0]["placements"]] == [0, 1, 2, 3]
    second = api.get("/v1/tenants", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [t["name"] for t in second["items"]] == ["t003", "t004", "t005"]
    assert len(api.get("/v1/tenants").json()["items"]) == 7, "the default limit (100) holds them all"
    with _statements(engine) as statements:
        assert len(api.get("/v1/nodes", params={"limit": 1000}).json()["items"]) == 7
    assert len(statements) <= 2
    for params, code in (
        ({"limit": 0}, "invalid_request"),
        ({"limit": 1001}, "invalid_request"),
        ({"cursor": "not a cursor"}, "invalid_cursor"),
        ({"cursor": first["next_cursor"][:-2]}, "invalid_cursor"),
    ):
        refused = api.get("/v1/tenants", params=params)
        assert refused.status_code == 422 and refused.json()["code"] == code, (params, refused.text)
    elsewhere = api.get("/v1/operations", params={"cursor": first["next_cursor"]})  # a tenants cursor
    assert elsewhere.status_code == 422 and elsewhere.json()["code"] == "invalid_cursor"


def test_a_page_answer_carries_only_the_public_fields_whatever_the_service_put_in() -> None:
    """List routes serialize their page themselves (not through FastAPI's response_model): a row carrying more
    than the public model (here a tenant's admin token) still goes out as the public model only."""

    class Leaky(TenantPublic):
        admin_token: str = "tenant-admin-secret"

    leaky = Leaky(name="acme", agents=1, memory_mb=256, state=TenantState.active, created_at=1.0)
    body = json.loads(page_answer(TenantPublic, Page(items=[leaky], next_cursor="c")).body)
    assert body["next_cursor"] == "c" and body["items"][0]["name"] == "acme"
    assert "admin_token" not in body["items"][0] and "tenant-admin-secret" not in json.dumps(body)
    assert set(body["items"][0]) == set(TenantPublic.model_fields) | set(TenantPublic.model_computed_fields)
