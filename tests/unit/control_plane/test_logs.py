"""Structured logs (README "Logs"): every line an operation run writes is one JSON object with the operation's id
bound, and its tenant (tenant operations) or node (node operations). Run in a subprocess with the logging
`litefleet serve` configures, because structlog caches loggers on first use: reconfiguring inside this test
process would not reach loggers other tests already used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session, select

from control_plane.db.engine import make_engine
from control_plane.db.models import Operation, OperationState


def test_every_log_line_of_an_operation_run_is_json_with_its_ids_bound(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    run = subprocess.run(
        [sys.executable, "-m", "tests.unit.control_plane.log_run", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[3],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line parses: no plain-text line anywhere
    engine = make_engine(url)
    with Session(engine) as session:
        ops = {op.id: op for op in session.exec(select(Operation))}
    engine.dispose()
    assert {op.kind.value for op in ops.values()} == {"provision", "evacuate", "scale", "failover"}
    assert all(op.state == OperationState.succeeded for op in ops.values())
    for record in records:
        assert record.get("op") in ops, record
        op = ops[record["op"]]
        assert record["kind"] == op.kind.value and record["level"] and record["timestamp"] and record["event"]
        if op.tenant is not None:
            assert record["tenant"] == op.tenant, record
        else:  # a node's operation (fail-over) spans tenants: the node is bound, each agent step names its agent
            assert record["node"] is not None, record
    events = {record["event"] for record in records}
    assert {"operation.started", "agent.started", "agent.stopped", "agent.moved", "operation.succeeded"} <= events
    for op_id in ops:  # each operation's own lines: started first, succeeded last
        own = [record["event"] for record in records if record["op"] == op_id]
        assert own[0] == "operation.started" and own[-1] == "operation.succeeded", own
