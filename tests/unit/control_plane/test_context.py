"""An operation's recorded state: parallel agents lose no step line and no mark; the first run's marks survive."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Operation, OperationKind
from control_plane.reconciler.claims import claim
from control_plane.reconciler.context import OpContext
from control_plane.reconciler.planning import MovePlan, StartPlan, from_json, to_json


def context(engine: Engine) -> OpContext:
    with Session(engine) as session:
        session.add(Operation(kind=OperationKind.evacuate, tenant="acme"))
        session.commit()
    claimed = claim(engine, lease=30)
    assert claimed is not None
    return OpContext(engine, *claimed)


def test_parallel_agents_lose_no_step_and_no_mark(engine: Engine) -> None:
    ctx = context(engine)

    def agent(ordinal: int) -> None:
        for i in range(5):
            ctx.step("agent.progress", f"{i}", agent=ordinal)
            ctx.remember(f"mark{i}", i, f"acme/{ordinal}")
        ctx.mark_done(f"acme/{ordinal}", downtime_s=ordinal)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(agent, range(4)))
    with Session(engine) as session:
        op = session.get(Operation, ctx.id)
        assert op is not None
        assert len(op.steps) == 20
        assert sorted(op.params["done"]) == [f"acme/{i}" for i in range(4)]
        assert op.params["mark4"] == {f"acme/{i}": 4 for i in range(4)}
        assert op.result["downtime_s"] == {f"acme/{i}": i for i in range(4)}


def test_the_first_runs_marks_and_plans_win(engine: Engine) -> None:
    ctx = context(engine)
    assert ctx.remember("stopped_at", 1.0, "acme/0") == 1.0
    assert ctx.remember("stopped_at", 2.0, "acme/0") == 1.0
    first = ctx.plan("acme/0", lambda: MovePlan(1, "n1", 2, "n2"))
    assert ctx.plan("acme/0", lambda: MovePlan(1, "n1", 2, "n3")) == first


def test_plans_read_back_the_untyped_dicts_of_earlier_versions() -> None:
    assert from_json({"generation": 3, "restore_from": 2, "node": "n1", "keep": False}) == StartPlan(3, "n1", 2)
    old_move = {"from_generation": 1, "from_node": "n1", "generation": 2, "node": "n2"}
    assert from_json(old_move) == MovePlan(1, "n1", 2, "n2") and to_json(from_json(old_move)) == old_move
