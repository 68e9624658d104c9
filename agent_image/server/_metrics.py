"""Prometheus metrics of one agent, computed at scrape time from the runtime (and replication, if any).

prometheus_client is imported at the first scrape, not at start: ~15 ms of every agent's start to /readyz
(`python -X importtime`, issue 14) for a route the control plane calls later, if ever."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from agent_image._runtime import Runtime


class _AgentCollector:
    def __init__(self, runtime: Runtime, replication: Any, lease: Any) -> None:
        self.runtime = runtime
        self.replication = replication
        self.lease = lease

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        workflows = GaugeMetricFamily("litefleet_workflows", "Workflows by status", labels=["status"])
        for status, count in self.runtime.counts().items():
            workflows.add_metric([status], count)
        yield workflows
        yield GaugeMetricFamily("litefleet_agent_ready", "1 once recovery finished", value=int(self.runtime.ready))
        yield GaugeMetricFamily("litefleet_agent_draining", "1 while draining", value=int(self.runtime.draining))
        if self.lease is not None:
            lease = self.lease.status()
            yield GaugeMetricFamily(
                "litefleet_lease_held",
                "1 while CURRENT was confirmed within the lease timeout",
                value=int(self.lease.held()),
            )
            if lease.get("seconds_since_confirmed") is not None:
                yield GaugeMetricFamily(
                    "litefleet_lease_seconds_since_confirmed",
                    "Seconds since CURRENT was last confirmed to name this generation",
                    value=lease["seconds_since_confirmed"],
                )
        if self.replication is None:
            return
        status = self.replication.status()
        states = GaugeMetricFamily(
            "litefleet_replication_state",
            "1 for the replication state the agent is in (ok, lagging, stalled)",
            labels=["state"],
        )
        for name in ("ok", "lagging", "stalled"):
            states.add_metric([name], int(status.get("state") == name))
        yield states
        for key, help_text in (
            ("local_txid", "Last transaction id in the local database"),
            ("replica_txid", "Last transaction id in the replica"),
            ("lag_txids", "Transactions committed locally and not yet in the replica"),
            ("seconds_since_sync", "Seconds since the replica last caught up with the database"),
            ("unconfirmed_commits", "Transactions this process committed that no sync has confirmed in the replica"),
        ):
            if status.get(key) is not None:
                yield GaugeMetricFamily(f"litefleet_replication_{key}", help_text, value=status[key])


def render(runtime: Runtime, replication: Any = None, lease: Any = None) -> tuple[bytes, str]:
    """The exposition and its content type."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AgentCollector(runtime, replication, lease))
    return generate_latest(registry), CONTENT_TYPE_LATEST
