"""A mass node outage: fail-overs of many nodes run side by side within a bound, and never hold an unrelated
tenant's operation behind them (issue 14). The claim rules first, then 50 down nodes through the real runners."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import Agent, AgentState, Node, NodeState, Operation, OperationKind, OperationState
from control_plane.db.models import Tenant as TenantRow
from control_plane.reconciler import OpContext, Reconciler, claim, claim_batch
from control_plane.reconciler.runners import runners
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import fake_fleet


@pytest.fixture(autouse=True)
def _no_fsync(engine: Engine) -> None:
    """What is measured here is the claim rules, not the disk: SQLite need not wait for it at every commit."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda connection, _: connection.execute("PRAGMA synchronous=OFF"))
        engine.dispose()


def _add(engine: Engine, *rows: Any) -> list[str]:
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()
        return [getattr(row, "id", "") for row in rows]


def _agent(tenant: str, ordinal: int, node: str) -> Agent:
    return Agent(
        id=f"{tenant}/{ordinal}", tenant=tenant, ordinal=ordinal, node=node, generation=1, state=AgentState.running
    )


def _op(kind: OperationKind, *, tenant: str | None = None, node: str | None = None, at: float) -> Operation:
    params = {"agents": 1} if tenant else {"declared_down_at": 1.0}
    return Operation(kind=kind, tenant=tenant, node=node, params=params, created_at=at)


def _one_by_one(engine: Engine, **kwargs: Any) -> list[str]:
    ids = []
    while (taken := claim(engine, lease=30, **kwargs)) is not None:
        ids.append(taken[0].id)
    return ids


def _in_one_batch(engine: Engine, **kwargs: Any) -> list[str]:
    return [op.id for op, _ in claim_batch(engine, lease=30, limit=1000, **kwargs)]


@pytest.fixture(params=[_one_by_one, _in_one_batch], ids=["one_by_one", "in_one_batch"])
def claim_all(request: pytest.FixtureRequest) -> Callable[..., list[str]]:
    """Every claim rule holds the same whether a worker claims one operation at a time or a pass claims a batch."""
    return request.param  # type: ignore[no-any-return]


def test_fail_overs_of_different_nodes_run_together_and_block_only_their_own_tenants(
    engine: Engine, claim_all: Callable[..., list[str]]
) -> None:
    _add(engine, _agent("a", 0, "n1"), _agent("a", 1, "n2"), _agent("b", 0, "n2"), _agent("c", 0, "n3"))
    scale_b = _op(OperationKind.scale, tenant="b", at=1)  # asked before n2 went down: n2's fail-over waits for it
    fail_n1 = _op(OperationKind.failover, node="n1", at=2)
    fail_n2 = _op(OperationKind.failover, node="n2", at=3)  # shares tenant a with n1's, not one agent: runs too
    scale_a = _op(OperationKind.scale, tenant="a", at=4)  # a's agents are being failed over: waits
    scale_c = _op(OperationKind.scale, tenant="c", at=5)  # unrelated to every fail-over ahead: runs
    ids = _add(engine, scale_b, fail_n1, fail_n2, scale_a, scale_c)

    assert claim_all(engine, node_wide_limit=4) == [ids[0], ids[1], ids[4]]
    with Session(engine) as session:  # b's scale finished: n2's fail-over may go, beside n1's
        op = session.get(Operation, ids[0])
        assert op is not None
        op.state, op.locked_until = OperationState.succeeded, None
        session.add(op)
        session.commit()
    assert claim_all(engine, node_wide_limit=4) == [ids[2]]
    assert claim_all(engine, node_wide_limit=4) == [], "a's scale waits for both of a's fail-overs"


def test_node_wide_operations_are_bounded_and_tenant_workers_never_take_them(
    engine: Engine, claim_all: Callable[..., list[str]]
) -> None:
    _add(engine, *[_agent(f"t{i}", 0, f"n{i}") for i in range(5)])
    fails = _add(engine, *[_op(OperationKind.failover, node=f"n{i}", at=i) for i in range(5)])
    other = _add(engine, _op(OperationKind.scale, tenant="other", at=10))
    assert claim_all(engine, only="tenant", node_wide_limit=3) == other
    assert claim_all(engine, only="node", node_wide_limit=3) == fails[:3]
    assert claim_all(engine, only="node", node_wide_limit=3) == [], "three held: the bound"


def test_a_drain_without_a_node_is_fleet_wide_and_runs_alone(
    engine: Engine, claim_all: Callable[..., list[str]]
) -> None:
    _add(engine, _agent("a", 0, "n1"))
    first = _add(engine, _op(OperationKind.scale, tenant="a", at=1))
    _add(engine, _op(OperationKind.drain, at=2), _op(OperationKind.scale, tenant="z", at=3))
    assert claim_all(engine, node_wide_limit=4) == first, "the drain waits for what is ahead; z waits for the drain"


QUEUES = st.lists(
    st.tuples(
        st.sampled_from([OperationKind.scale, OperationKind.failover, OperationKind.drain]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["n1", "n2", "n3", None]),
    ),
    max_size=12,
)


@examples(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    queue=QUEUES,
    placed=st.lists(st.sampled_from(["n1", "n2", "n3"]), min_size=6, max_size=6),
    only=st.sampled_from([None, "tenant", "node"]),
    node_wide_limit=st.integers(1, 3),
)
def test_a_batch_takes_exactly_what_claims_one_at_a_time_take(
    engine: Engine,
    queue: list[tuple[OperationKind, str, str | None]],
    placed: list[str],
    only: Any,
    node_wide_limit: int,
) -> None:
    """Any queue, any placement: one `claim_batch` takes the same operations, in the same order, as claiming one
    at a time until nothing is due (then the queue is put back and the batch claims it)."""
    with Session(engine) as session:
        for row in session.exec(select(Operation)).all():
            session.delete(row)
        for row in session.exec(select(Agent)).all():
            session.delete(row)
        session.commit()
    _add(engine, *[_agent(tenant, i, node) for i, (tenant, node) in enumerate(zip("abcabc", placed, strict=True))])
    ids = _add(
        engine,
        *[
            _op(
                kind,
                tenant=None if kind != OperationKind.scale else tenant,
                node=None if kind == OperationKind.scale else node,
                at=i,
            )
            for i, (kind, tenant, node) in enumerate(queue)
        ],
    )
    one_by_one = _one_by_one(engine, only=only, node_wide_limit=node_wide_limit)
    with Session(engine) as session:
        for row in session.exec(select(Operation)).all():
            row.state, row.lock_token, row.locked_until, row.attempts = OperationState.pending, None, None, 0
            session.add(row)
        session.commit()
    assert _in_one_batch(engine, only=only, node_wide_limit=node_wide_limit) == one_by_one
    assert set(one_by_one) <= set(ids)


DOWN, UP = 50, 10


def test_fifty_down_nodes_fail_over_in_parallel_batches_while_a_tenant_scales(engine: Engine) -> None:
    """50 nodes go down at once, each holding agent 0 of one tenant and agent 1 of the next (so neighbouring
    fail-overs share tenants, never agents); a bystander tenant asks to scale after all 50 were queued. With 8
    node workers the fail-overs run 8 at a time, and the bystander's scale runs on a tenant worker at once."""
    settings = Settings(move_parallelism=2, ready_timeout=10, agent_lease_timeout=0.3, agent_lease_margin=0)
    fleet, engines = fake_fleet(engine, settings)
    rows: list[Any] = [Node(name=f"up{i:02}", engine_url=f"fake-up{i:02}", capacity_agents=40) for i in range(UP)]
    for i in range(DOWN):
        rows.append(Node(name=f"down{i:02}", engine_url=f"fake-down{i:02}", state=NodeState.down))
        engines(f"fake-down{i:02}").reachable = False
        rows.append(TenantRow(name=f"t{i:02}", agents=2, memory_mb=64))
        rows += [_agent(f"t{i:02}", 0, f"down{i:02}"), _agent(f"t{i:02}", 1, f"down{(i + 1) % DOWN:02}")]
        for ordinal in (0, 1):
            engines.replicas.advance_current(f"t{i:02}", ordinal, 1, None)
            engines.replicas.txids[(f"t{i:02}", ordinal, 1)] = 7
    rows.append(TenantRow(name="bystander", agents=1, memory_mb=64))
    now = time.time()
    rows += [_op(OperationKind.failover, node=f"down{i:02}", at=now + i * 1e-3) for i in range(DOWN)]
    rows.append(_op(OperationKind.scale, tenant="bystander", at=now + 1))
    _add(engine, *rows)

    running, most = 0, 0
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()
    real = runners(fleet)

    def counted(ctx: OpContext) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        started = time.monotonic()
        try:
            real[OperationKind.failover](ctx)
        finally:
            with lock:
                running -= 1
                spans[ctx.id] = (started, time.monotonic())

    reconciler = Reconciler(engine, {**real, OperationKind.failover: counted}, workers=2, lease=30, node_workers=8)
    reconciler.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with Session(engine) as session:
                left = session.exec(select(Operation).where(col(Operation.finished_at).is_(None))).all()
            if not left:
                break
            time.sleep(0.2)
    finally:
        reconciler.stop()

    with Session(engine) as session:
        ops = session.exec(select(Operation)).all()
        assert all(op.state == OperationState.succeeded for op in ops), [(op.kind, op.error) for op in ops if op.error]
        agents = session.exec(select(Agent).where(col(Agent.tenant) != "bystander")).all()
        assert len(agents) == 2 * DOWN
        assert all(a.node and a.node.startswith("up") and a.generation == 2 for a in agents), "every agent moved"
        assert all(a.state == AgentState.running for a in agents)
        scale = next(op for op in ops if op.kind == OperationKind.scale)
        failovers = sorted((op.finished_at or 0) for op in ops if op.kind == OperationKind.failover)
    wall = max(end for _, end in spans.values()) - min(start for start, _ in spans.values())
    assert 4 <= most <= 8, (
        f"fail-overs ran {most} at a time ({wall:.1f}s in all): in parallel, within the 8 node workers"
    )
    assert scale.finished_at is not None and scale.finished_at < failovers[DOWN // 4], (
        "the bystander's scale ran while fail-overs were queued, not after them"
    )
