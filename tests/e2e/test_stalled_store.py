"""A frozen object store shows up as stalled replication, measured against the store (issue 11 and 12): real
SeaweedFS (the session's store: its `weed mini` and `weed s3` processes, by the pids it recorded), a real agent
container on a namespaced node, the control plane as a subprocess, a writer starting workflows through the router.

While the store is SIGSTOPped the agent's own view cannot see it (its last position stays put, so its own lag
in txids does not grow); the control plane's store-side measurement must show the lag growing in /metrics,
`stalled` on the agent and the tenant, and the alert on the dashboard's overview. After SIGCONT it must come back
to `ok`."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from control_plane.drivers.agent_http import bearer
from control_plane.storage.seaweed import EmbeddedStore
from tests.e2e.conftest import ControlPlane, frozen, tenant_name
from tests.e2e.test_fleet import RoutedWriter, running, wait_for_writes

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics(plane: ControlPlane) -> Samples:
    answer = plane.call("GET", "/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def agent_metric(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, tenant: str, **more: str
) -> float | None:
    return found.get((name, tuple(sorted({"tenant": tenant, "agent": "0", **more}.items()))))


def until(
    what: str, check: Callable[[], Any], timeout: float, every: float = 1.0, state: Callable[[], Any] = lambda: None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s; {state()}"
        time.sleep(every)


def diagnosis(plane: ControlPlane, tenant: str) -> dict[str, Any]:
    """The agent as the API shows it, and its own /readyz (asked with its token), for a failure message."""
    agent = running(plane, tenant)[0]
    try:
        token = plane.agent_token(tenant, 0)
        readyz = httpx.get(f"{agent['url']}/readyz", headers=bearer(token), timeout=5).text[:1000]
    except httpx.HTTPError as exc:
        readyz = repr(exc)
    return {"agent": agent, "readyz": readyz}


def test_a_frozen_store_is_stalled_replication_in_metrics_api_and_dashboard_then_recovers(
    control_plane: ControlPlane, store: EmbeddedStore
) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 1, "sync_interval": 0.5})
    writer = RoutedWriter(plane, tenant, "s")
    writer.start()
    try:
        wait_for_writes(writer, 20)

        def replication() -> tuple[str, str]:
            body = plane.call("GET", f"/v1/tenants/{tenant}", timeout=10).json()
            return body["replication"], running(plane, tenant)[0]["replication"]

        why = partial(diagnosis, plane, tenant)
        until("replication ok before the freeze", lambda: replication() == ("ok", "ok"), 90, state=why)
        before = metrics(plane)
        assert agent_metric(before, "litefleet_agent_replication_state", tenant, state="ok") == 1

        with frozen(store):
            frozen_at, frozen_wall = time.monotonic(), time.time()
            lags: list[float] = []

            def stalled() -> bool:
                lag = agent_metric(metrics(plane), "litefleet_agent_replication_lag_seconds", tenant)
                if lag is not None:
                    lags.append(lag)
                return replication() == ("stalled", "stalled")

            until("stalled while the store is frozen", stalled, 120, every=2, state=why)
            stalled_after = time.monotonic() - frozen_at
            found = metrics(plane)
            assert agent_metric(found, "litefleet_agent_replication_state", tenant, state="stalled") == 1
            lag = agent_metric(found, "litefleet_agent_replication_lag_seconds", tenant)
            settings_stalled = float(plane.env["LITEFLEET_REPLICATION_STALLED_AFTER"])
            assert lag is not None and lag > settings_stalled
            assert len(lags) >= 3 and lags[-1] > lags[0] + 5, f"the lag did not grow: {lags}"
            agent = running(plane, tenant)[0]
            assert agent["lag_seconds"] > settings_stalled and agent["replication_note"]
            # Litestream's txids stand still while it cannot upload; the runtime's own count of commits no sync
            # has confirmed includes every write acknowledged since the freeze (until the lease stops them)
            since_freeze = writer.by(0, after=frozen_wall + 1.0)
            assert since_freeze, "no write was acknowledged after the freeze"
            peak = running(plane, tenant)[0]["unconfirmed_commits"]
            assert peak is not None and peak >= len(since_freeze), (peak, len(since_freeze))
            own_view = {
                key: agent[key]
                for key in ("ready", "seconds_since_sync", "local_txid", "replica_txid", "unconfirmed_commits")
            }
            page = plane.call("GET", "/ui", timeout=10)
            assert page.status_code == 200
            alerts = page.text.split('id="alerts"')[1].split("</ul>")[0]
            assert "alert-replication_stalled" in alerts and f"{tenant}/0" in alerts
            print(f"stalled {stalled_after:.1f}s after the freeze; lag_seconds samples {lags}; agent: {own_view}")

        thawed_at = time.monotonic()
        until("ok again after the store returned", lambda: replication() == ("ok", "ok"), 120, every=2, state=why)
        recovered_after = time.monotonic() - thawed_at
        found = metrics(plane)
        assert agent_metric(found, "litefleet_agent_replication_state", tenant, state="ok") == 1
        lag = agent_metric(found, "litefleet_agent_replication_lag_seconds", tenant)
        assert lag is not None and lag < float(plane.env["LITEFLEET_REPLICATION_LAGGING_AFTER"])
        written = len(writer.acknowledged)
        wait_for_writes(writer, written + 10)  # and it serves writes again

        writer.stop.set()
        writer.join(15)

        def confirmed_again() -> bool:  # no new writes: the next probe's sync confirms every commit
            return running(plane, tenant)[0]["unconfirmed_commits"] == 0

        until("every commit confirmed after the thaw", confirmed_again, 60, every=1, state=why)
        print(f"ok again {recovered_after:.1f}s after the thaw; unconfirmed commits peaked at {peak} while frozen")
    finally:
        writer.stop.set()
        writer.join(15)
        plane.call("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"}, timeout=60)
