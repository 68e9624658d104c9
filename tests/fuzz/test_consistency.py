"""The fleet DB consistency check finds each broken rule it names, and nothing in a consistent fleet."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.engine import make_engine, migrate
from control_plane.db.models import (
    Agent,
    AgentState,
    ApiToken,
    Event,
    Node,
    Operation,
    OperationKind,
    OperationState,
    Tenant,
    TenantState,
)
from tests.fuzz.consistency import problems


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated, empty fleet DB; each test gets a copy (migrating takes seconds)."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def engine(migrated: Path, tmp_path: Path) -> Iterator[Engine]:
    shutil.copy(migrated, tmp_path / "fleet.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    with Session(engine) as session:
        session.add_all([Node(name="n1", engine_url="unix:///x", capacity_agents=1), Tenant(name="acme", agents=1)])
        session.add(Agent(id="acme/0", tenant="acme", ordinal=0, node="n1", state=AgentState.running))
        op = Operation(kind=OperationKind.provision, tenant="acme", state=OperationState.succeeded)
        op.finished_at = time.time()
        session.add_all([op, Event(kind="operation.provision", operation=op.id, message="provision queued")])
        session.add(ApiToken(id="0123456789ab", tenant="acme", secret_sha256="0" * 64))
        session.commit()
    yield engine
    engine.dispose()


def test_a_consistent_fleet_has_no_problems(engine: Engine) -> None:
    assert problems(engine) == []


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([Agent(id="gone/0", tenant="gone", ordinal=0, state=AgentState.retained)], "tenant gone, which does not"),
        ([Agent(id="acme/9", tenant="acme", ordinal=1, state=AgentState.retained)], "is tenant acme ordinal 1"),
        ([Agent(id="acme/1", tenant="acme", ordinal=1, node="n9", state=AgentState.starting)], "node n9, which"),
        ([Agent(id="acme/1", tenant="acme", ordinal=1, node="n1", state=AgentState.running)], "more than its capacity"),
        (
            [Agent(id="acme/1", tenant="acme", ordinal=1, reserved_node="n1", reserved_by="gone")],
            "keeps a place on n1 for operation gone, which ended",
        ),
        ([Tenant(name="zed", agents=2, state=TenantState.hibernated)], "hibernated with 2 agents"),
        ([Tenant(name="zed", agents=99)], "wants 99 agents"),
        (
            [
                Operation(id=f"op{i}", kind=OperationKind.scale, tenant="acme", state=OperationState.running)
                for i in range(2)
            ]
            + [Event(kind="operation.scale", operation=f"op{i}", message="scale queued") for i in range(2)],
            "tenant acme has 2 running operations",
        ),
        ([Operation(id="op1", kind=OperationKind.scale, state=OperationState.failed, error="x")], "with finished_at"),
        ([Operation(id="op1", kind=OperationKind.scale)], "has no event"),
        ([Event(kind="operation.scale", operation="nope", message="scale queued")], "operation nope, which does not"),
        ([ApiToken(id="ba9876543210", tenant="gone", secret_sha256="0" * 64)], "token ba9876543210 of tenant gone"),
    ],
)
def test_each_broken_rule_is_found(engine: Engine, rows: list[object], problem: str) -> None:
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
    found = problems(engine)
    assert len(found) >= 1 and any(problem in line for line in found), found
