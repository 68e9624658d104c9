"""Prometheus metrics of the control plane. The fleet's state is read from the fleet DB at scrape time (so every
control-plane replica answers the same, and a restart loses nothing); only latencies measured in this process
(heartbeats, probes) are kept in memory. Labels stay bounded: states, kinds, tenant and agent ordinal, never a
workflow id."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import (
    FINISHED_STATES,
    Agent,
    AgentPublic,
    AgentState,
    Node,
    NodeState,
    Operation,
    OperationState,
    ReplicationState,
)

# Measured in this process, shared by every app built in it.
INSTRUMENTS = CollectorRegistry(auto_describe=True)
HEARTBEAT_SECONDS = Histogram(
    "litefleet_node_heartbeat_seconds",
    "Time a node's engine took to answer a heartbeat ping (failed pings included).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=INSTRUMENTS,
)
HEARTBEAT_ROUND_SECONDS = Histogram(
    "litefleet_heartbeat_round_seconds",
    "Time one heartbeat round took (every node pinged at once, results written).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=INSTRUMENTS,
)
PROBE_SECONDS = Histogram(
    "litefleet_agent_probe_seconds",
    "Time an agent took to answer its /readyz probe (no answer included).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    registry=INSTRUMENTS,
)
HELD_SECONDS = Histogram(
    "litefleet_held_request_seconds",
    "How long routed requests waited for a moved agent's new incarnation, by how the wait ended: delivered (a new "
    "incarnation runs), timed_out (hold_timeout: 503 agent_moving), full (max_held_requests: 503 at once), "
    "other (the request's own error).",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0),
    registry=INSTRUMENTS,
)
OPERATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class FleetCollector(Collector):
    """Reads the fleet DB on every scrape. `followers`: the observer's copies by kind (follow, periodic), when
    one runs; `held`: how many routed requests this app holds now."""

    def __init__(
        self,
        engine: Engine,
        followers: Callable[[], Mapping[str, int]] | None = None,
        held: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self.followers = followers
        self.held = held

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            nodes = dict(session.exec(select(Node.state, func.count()).group_by(col(Node.state))).all())
            agents = dict(session.exec(select(Agent.state, func.count()).group_by(col(Agent.state))).all())
            running = [
                AgentPublic.model_validate(agent)
                for agent in session.exec(select(Agent).where(Agent.state == AgentState.running))
            ]
            operations = session.exec(
                select(Operation.kind, Operation.state, func.count()).group_by(
                    col(Operation.kind), col(Operation.state)
                )
            ).all()
            durations = session.exec(
                select(Operation.kind, Operation.created_at, Operation.finished_at).where(
                    col(Operation.state).in_(FINISHED_STATES)
                )
            ).all()
        yield _by_label("litefleet_nodes", "Registered nodes by state.", "state", NodeState, nodes)
        yield _by_label("litefleet_agents", "Agents (tenant x ordinal) by state.", "state", AgentState, agents)
        yield from _lag(running)
        yield from _operations(operations, durations)
        if self.followers is not None:
            found = self.followers()
            yield _by_label(
                "litefleet_observer_followers",
                "Agents the observer keeps a copy of, by kind of copy.",
                "kind",
                ("follow", "periodic"),
                found,
            )
        if self.held is not None:
            yield GaugeMetricFamily(
                "litefleet_held_requests",
                "Routed requests this control plane holds now, waiting for a moved agent's new incarnation.",
                value=self.held(),
            )


class _Instruments(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from INSTRUMENTS.collect()


def registry(
    engine: Engine, followers: Callable[[], Mapping[str, int]] | None = None, held: Callable[[], int] | None = None
) -> CollectorRegistry:
    """One app's registry: the fleet DB's state at scrape time and this process's latencies."""
    found = CollectorRegistry(auto_describe=False)
    found.register(FleetCollector(engine, followers, held))
    found.register(_Instruments())
    return found


def _by_label(name: str, doc: str, label: str, values: Iterable[object], counts: Mapping[Any, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=[label])
    seen = {str(value): 0 for value in values}  # every known value, 0 included: absent is not zero
    for value, count in counts.items():
        seen[str(value)] = seen.get(str(value), 0) + int(count)
    for value, count in sorted(seen.items()):
        family.add_metric([value], count)
    return family


def _lag(running: Iterable[AgentPublic]) -> Iterator[Metric]:
    """Per running agent, from the store-side measurement (control_plane/observer/lag.py). Labels: tenant and
    agent ordinal (bounded by the fleet's size), and the replication state (four values)."""
    labels = ["tenant", "agent"]
    txids = GaugeMetricFamily(
        "litefleet_agent_replication_lag_txids",
        "Transactions the agent reported committing that the replica in object storage does not list yet.",
        labels=labels,
    )
    seconds = GaugeMetricFamily(
        "litefleet_agent_replication_lag_seconds",
        "Seconds since the newest moment known to be covered by the replica (writes after it may be missing).",
        labels=labels,
    )
    replica = GaugeMetricFamily(
        "litefleet_agent_replica_txid", "Newest transaction id the replica lists in object storage.", labels=labels
    )
    state = GaugeMetricFamily(
        "litefleet_agent_replication_state",
        "1 for the agent's replication state measured against the store (ok, lagging, stalled, unknown).",
        labels=[*labels, "state"],
    )
    since = GaugeMetricFamily(
        "litefleet_agent_seconds_since_sync",
        "Seconds since the agent's last successful replica sync, as the agent itself reports it (its /readyz).",
        labels=labels,
    )
    unconfirmed = GaugeMetricFamily(
        "litefleet_agent_unconfirmed_commits",
        "Transactions the agent committed that no sync had confirmed in the replica, at its last probe (its "
        "own count: it grows while the store is frozen, when txids stand still).",
        labels=labels,
    )
    by_state = {value.value: 0 for value in ReplicationState}
    for agent in running:
        key = [agent.tenant, str(agent.ordinal)]
        if agent.lag_txids is not None:
            txids.add_metric(key, agent.lag_txids)
        if agent.lag_seconds is not None:
            seconds.add_metric(key, agent.lag_seconds)
        if agent.replica_txid is not None:
            replica.add_metric(key, agent.replica_txid)
        if agent.seconds_since_sync is not None:
            since.add_metric(key, agent.seconds_since_sync)
        if agent.unconfirmed_commits is not None:
            unconfirmed.add_metric(key, agent.unconfirmed_commits)
        for value in ReplicationState:
            state.add_metric([*key, value.value], 1 if agent.replication == value else 0)
        by_state[agent.replication.value] += 1
    yield txids
    yield seconds
    yield replica
    yield state
    yield since
    yield unconfirmed
    yield _by_label(
        "litefleet_agents_by_replication", "Running agents by replication state.", "state", ReplicationState, by_state
    )


def _operations(
    counts: Iterable[tuple[object, object, int]], durations: Iterable[tuple[object, float, float | None]]
) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "litefleet_operations", "Finished operations by kind and outcome.", labels=["kind", "state"]
    )
    depth = GaugeMetricFamily("litefleet_reconciler_queue_depth", "Operations waiting to be claimed.")
    in_progress = GaugeMetricFamily(
        "litefleet_operations_running", "Operations being worked on, by kind.", labels=["kind"]
    )
    pending = 0
    for kind, state, count in counts:
        if state in FINISHED_STATES:
            total.add_metric([str(kind), str(state)], count)
        elif state == OperationState.pending:
            pending += count
        else:
            in_progress.add_metric([str(kind)], count)
    depth.add_metric([], pending)
    yield total
    yield depth
    yield in_progress
    by_kind: dict[str, list[float]] = {}
    for kind, created, finished in durations:
        if finished is not None:
            by_kind.setdefault(str(kind), []).append(max(0.0, finished - created))
    histogram = HistogramMetricFamily(
        "litefleet_operation_duration_seconds", "Queued-to-finished time of finished operations.", labels=["kind"]
    )
    for kind, values in sorted(by_kind.items()):
        buckets = [(_le(bound), sum(1 for v in values if v <= bound)) for bound in OPERATION_BUCKETS]
        buckets.append(("+Inf", len(values)))
        histogram.add_metric([kind], buckets, sum(values))
    yield histogram


def _le(bound: float) -> str:
    return repr(float(bound))
