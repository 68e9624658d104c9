"""Claims and leases: one owner per operation, one operation per tenant at a time, stale owners write nothing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Operation, OperationKind, OperationState
from control_plane.reconciler import LostLease, OpContext, Reconciler, claim, finish, worker


def queue(engine: Engine, kind: OperationKind = OperationKind.scale, tenant: str | None = "acme") -> str:
    with Session(engine) as session:
        op = Operation(kind=kind, tenant=tenant, params={"agents": 1})
        session.add(op)
        session.commit()
        return op.id


def test_a_claimed_operation_is_not_claimed_again_until_its_lease_runs_out(engine: Engine) -> None:
    op_id = queue(engine)
    first = claim(engine, lease=0.5)
    assert first is not None and first[0].id == op_id and first[0].state == OperationState.running
    assert claim(engine, lease=0.5) is None
    time.sleep(0.6)  # the first owner died without renewing
    second = claim(engine, lease=5)
    assert second is not None and second[0].id == op_id and second[0].attempts == 2
    assert second[1] != first[1]


def test_a_stale_owner_can_neither_log_nor_finish(engine: Engine) -> None:
    op_id = queue(engine)
    stale = claim(engine, lease=0.2)
    assert stale is not None
    time.sleep(0.3)
    fresh = claim(engine, lease=5)
    assert fresh is not None
    with pytest.raises(LostLease):
        OpContext(engine, stale[0], stale[1]).step("agent.started")
    assert finish(engine, op_id, stale[1], None, {}) is False
    assert finish(engine, op_id, fresh[1], None, {"agents": 1}) is True
    assert finish(engine, op_id, fresh[1], None, {"agents": 1}) is False  # twice is harmless
    with Session(engine) as session:
        op = session.get(Operation, op_id)
        assert op is not None and op.state == OperationState.succeeded and op.lock_token is None


def test_one_operation_per_tenant_at_a_time_and_drains_wait_their_turn(engine: Engine) -> None:
    first, second = queue(engine), queue(engine)
    other = queue(engine, tenant="globex")
    drain = queue(engine, OperationKind.drain, tenant=None)
    claimed = [claim(engine, lease=30) for _ in range(4)]
    ids = [c[0].id for c in claimed if c is not None]
    assert ids == [first, other], "acme's second operation waits for its first; the drain waits for both"
    assert finish(engine, first, claimed[0][1], None, {})  # type: ignore[index]
    assert claim(engine, lease=30) is not None  # acme's second
    assert claim(engine, lease=30) is None  # the drain still waits for what was asked before it
    del second, drain


def test_the_reconciler_runs_operations_to_a_final_state(engine: Engine) -> None:
    good, bad = queue(engine), queue(engine, tenant="globex")

    def runner(ctx: OpContext) -> None:
        ctx.step("agent.started", "gen 1 ready", agent=0)
        if ctx.tenant == "globex":
            raise RuntimeError("engine went away")
        ctx.result["agents"] = 1

    reconciler = Reconciler(engine, {OperationKind.scale: runner}, workers=2, lease=2)
    reconciler.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with Session(engine) as session:
                states = {session.get(Operation, i).state for i in (good, bad)}  # type: ignore[union-attr]
            if states <= {OperationState.succeeded, OperationState.failed}:
                break
            time.sleep(0.05)
    finally:
        reconciler.stop()
    with Session(engine) as session:
        done, failed = session.get(Operation, good), session.get(Operation, bad)
        assert done is not None and failed is not None
        assert (done.state, done.result, done.error) == (OperationState.succeeded, {"agents": 1}, None)
        assert failed.state == OperationState.failed and failed.error == "RuntimeError: engine went away"
        assert [step["step"] for step in failed.steps] == ["agent.started", "operation.failed"]


def test_idle_workers_share_one_read_of_the_queue_and_run_side_by_side(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four operations of four tenants, four idle workers: one claim reads the queue and takes all four (as many as
    the lane has idle workers), and the four run at once, each on its own worker."""
    ids = {queue(engine, tenant=name) for name in ("a", "b", "c", "d")}
    reads: list[int] = []
    real = worker.claim_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        taken = real(*args, **kwargs)
        if taken:
            reads.append(len(taken))
        return taken

    monkeypatch.setattr(worker, "claim_batch", counted)
    all_started = threading.Barrier(4, timeout=5)
    threads: set[str] = set()

    def runner(ctx: OpContext) -> None:
        threads.add(threading.current_thread().name)
        all_started.wait()  # breaks (and the operation fails) unless all four run at once

    reconciler = Reconciler(engine, {OperationKind.scale: runner}, workers=4, lease=30)
    reconciler.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with Session(engine) as session:
                states = {session.get(Operation, i).state for i in ids}  # type: ignore[union-attr]
            if states <= {OperationState.succeeded, OperationState.failed}:
                break
            time.sleep(0.05)
    finally:
        reconciler.stop()
    assert states == {OperationState.succeeded}
    assert reads == [4], "one read of the queue took all four"
    assert len(threads) == 4


def test_operations_claimed_for_workers_that_never_took_them_are_released_at_stop(engine: Engine) -> None:
    """A batch claimed for two idle workers, of which one never took its share before stop(): stop hands that one
    back, so any control plane claims it at once, not a lease later."""
    first, second = queue(engine), queue(engine, tenant="globex")
    reconciler = Reconciler(engine, {OperationKind.scale: lambda ctx: None}, workers=2, lease=30)
    taken = reconciler._lanes[0].take(reconciler._claim)
    assert taken is not None and taken[0].id == first
    assert claim(engine, lease=30) is None, "the second is claimed, handed over to the other worker"
    reconciler.stop()
    again = claim(engine, lease=30)
    assert again is not None and again[0].id == second
