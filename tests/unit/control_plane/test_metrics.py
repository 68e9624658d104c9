"""`/metrics`: the fleet DB's state at scrape time in Prometheus text format, parsed back with prometheus_client's
own parser; the same token as /v1; label values bounded (no workflow ids)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, update

from control_plane.app import create_app
from control_plane.db.models import Agent, AgentState, Node, NodeState, Operation, OperationKind, OperationState
from control_plane.fleet.incarnations import Fleet
from control_plane.observer import AgentRef, CopyKind, LagSampler, LagThresholds
from control_plane.reconciler.health import HealthMonitor
from control_plane.settings import Settings
from tests.unit.control_plane.fakes import FakeCredentials, FakeReplicas
from tests.unit.control_plane.observed import FakeObserver, add_tenant, info


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_the_fleet_db_at_scrape_time(engine: Engine, tmp_path: Path) -> None:
    from control_plane.drivers.fake import FakeDriver

    with Session(engine) as session:
        session.add_all([Node(name="n1", engine_url="fake-1"), Node(name="n2", engine_url="fake-2")])
        session.commit()
    fleet = Fleet(engine, Settings(), FakeReplicas(), FakeCredentials(), make_driver=FakeDriver)
    HealthMonitor(engine, fleet, Settings()).beat()  # pings n1 and n2: heartbeat latencies observed
    with Session(engine) as session:
        session.add(Node(name="n3", engine_url="fake-3", state=NodeState.down))
        for kind, state, seconds in [
            (OperationKind.scale, OperationState.succeeded, 4.0),
            (OperationKind.scale, OperationState.succeeded, 40.0),
            (OperationKind.evacuate, OperationState.failed, 700.0),
            (OperationKind.provision, OperationState.pending, None),
            (OperationKind.wake, OperationState.running, None),
        ]:
            finished = 1000.0 + seconds if seconds is not None else None
            session.add(Operation(kind=kind, tenant="acme", state=state, created_at=1000.0, finished_at=finished))
        session.commit()
    add_tenant(engine, "acme", {0: (AgentState.running, 1), 1: (AgentState.running, 2), 2: (AgentState.retained, 1)})
    with Session(engine) as session:
        # the agent believes it is caught up (lag 0); the store lists txid 3 of the 10 it reported
        report = {
            "local_txid": 10,
            "replica_txid": 10,
            "lag_txids": 0,
            "seconds_since_sync": 1.5,
            "unconfirmed_commits": 4,
        }
        session.execute(update(Agent).where(col(Agent.id) == "acme/0").values(probed_at=time.time(), **report))
        session.commit()
    replicas = FakeReplicas()
    replicas.txids[("acme", 0, 1)] = 3
    sampler = LagSampler(engine, replicas, LagThresholds())
    sampler.tick()
    sampler.wait()
    sampler.tick()

    observer = FakeObserver(copies={("acme", 0): (1, [info("w")])})
    observer.follows = {AgentRef("acme", 0, 1): CopyKind.follow, AgentRef("acme", 1, 2): CopyKind.periodic}
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(state_dir=tmp_path, database_url=url, api_token="s3cret-token-of-24-chars-or-more")
    api = TestClient(create_app(settings, background=False, observer=observer, engine=engine))  # type: ignore[arg-type]

    assert api.get("/metrics").status_code == 401
    answer = api.get("/metrics", headers={"authorization": "Bearer s3cret-token-of-24-chars-or-more"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)

    def value(name: str, **labels: Any) -> float:
        return found[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))]

    assert value("litefleet_nodes", state="ready") == 2 and value("litefleet_nodes", state="down") == 1
    assert value("litefleet_nodes", state="draining") == 0
    assert value("litefleet_agents", state="running") == 2 and value("litefleet_agents", state="retained") == 1
    assert value("litefleet_agent_replication_lag_txids", tenant="acme", agent=0) == 7  # store-side
    assert value("litefleet_agent_replica_txid", tenant="acme", agent=0) == 3
    assert value("litefleet_agent_seconds_since_sync", tenant="acme", agent=0) == 1.5  # the agent's own view
    assert value("litefleet_agent_unconfirmed_commits", tenant="acme", agent=0) == 4
    assert value("litefleet_agent_replication_state", tenant="acme", agent=0, state="unknown") == 1  # just watched
    assert value("litefleet_agent_replication_state", tenant="acme", agent=0, state="ok") == 0
    assert value("litefleet_agents_by_replication", state="unknown") == 2
    assert ("litefleet_agent_replication_lag_txids", (("agent", "1"), ("tenant", "acme"))) not in found  # unknown
    assert (
        "litefleet_agent_replication_lag_seconds",
        (("agent", "0"), ("tenant", "acme")),
    ) not in found  # never synced
    assert value("litefleet_operations_total", kind="scale", state="succeeded") == 2
    assert value("litefleet_operations_total", kind="evacuate", state="failed") == 1
    assert value("litefleet_reconciler_queue_depth") == 1
    assert value("litefleet_operations_running", kind="wake") == 1
    assert value("litefleet_operation_duration_seconds_bucket", kind="scale", le="5.0") == 1
    assert value("litefleet_operation_duration_seconds_bucket", kind="scale", le="+Inf") == 2
    assert value("litefleet_operation_duration_seconds_sum", kind="scale") == 44.0
    assert value("litefleet_operation_duration_seconds_count", kind="evacuate") == 1
    assert value("litefleet_observer_followers", kind="follow") == 1
    assert value("litefleet_observer_followers", kind="periodic") == 1
    assert value("litefleet_node_heartbeat_seconds_count", outcome="ok") >= 2

    labels = {key for _, pairs in found for key, _ in pairs}
    assert labels <= {"state", "kind", "tenant", "agent", "le", "outcome"}  # bounded: never a workflow id
