"""The observer on real engines: what no running agent holds is still answered (retired ordinals after a scale-down,
a hibernated tenant), saying where the answer came from; and a tenant's state as of a time before an evacuation."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from typing import Any

from infra.testbed import Testbed
from tests.e2e.conftest import ControlPlane, tenant_name
from tests.e2e.test_fleet import agents_of, result, start


def get(plane: ControlPlane, path: str, **params: Any) -> dict[str, Any]:
    answer = plane.call("GET", path, params=params, timeout=120)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_router_answers_retired_hibernated_and_past_workflows_from_the_observer(
    control_plane: ControlPlane, testbed: Testbed
) -> None:
    plane, tenant = control_plane, tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 3, "sync_interval": 0.2})
    on_agent = {f"sc-{i}": start(plane, tenant, f"sc-{i}", 3, 0.0) for i in range(8)}
    for workflow_id in on_agent:
        assert result(plane, tenant, workflow_id) == ("SUCCESS", sum(range(3)))
    assert set(on_agent.values()) - {0}, f"the ids all hashed to agent 0: {on_agent}"

    plane.done("POST", f"/v1/tenants/{tenant}/scale", json={"agents": 1})  # retires 2 and 1, keeps their replicas
    for workflow_id, agent in on_agent.items():
        found = get(plane, f"/v1/tenants/{tenant}/workflows/{workflow_id}")
        assert (found["status"], found["result"], found["agent"]) == ("SUCCESS", 3, agent), found
        assert found["source"] == ("agent" if agent == 0 else "observer"), found
        if agent:
            assert found["freshness"]["generation"] >= 1 and found["freshness"]["txid"] > 0
    listing = get(plane, f"/v1/tenants/{tenant}/workflows", limit=100)
    assert {w["id"] for w in listing["workflows"]} == set(on_agent), listing
    assert {a["agent"]: a["source"] for a in listing["agents"]} == {0: "agent", 1: "observer", 2: "observer"}

    generation = next(a["generation"] for a in agents_of(plane, tenant) if a["ordinal"] == 0)
    before = dt.datetime.now(dt.UTC)
    time.sleep(1.5)
    start(plane, tenant, "after", 2, 0.0)
    assert result(plane, tenant, "after") == ("SUCCESS", 1)
    plane.done("POST", f"/v1/tenants/{tenant}/evacuate", json={})
    moved = next(a["generation"] for a in agents_of(plane, tenant) if a["ordinal"] == 0)
    assert moved > generation

    past = get(plane, f"/v1/tenants/{tenant}/history", at=before.isoformat(), agent=0)
    (agent0,) = past["agents"]
    assert agent0["freshness"]["generation"] == generation and agent0["freshness"]["kind"] == "snapshot"
    assert {w["id"] for w in agent0["workflows"]} == {w for w, a in on_agent.items() if a == 0}, past
    now = get(plane, f"/v1/tenants/{tenant}/history", at=dt.datetime.now(dt.UTC).isoformat(), agent=0)
    assert now["agents"][0]["freshness"]["generation"] == moved
    assert "after" in {w["id"] for w in now["agents"][0]["workflows"]}

    # the observer follows the running agent: problems answer (none here), followers show up in /metrics
    assert tenant not in {w["tenant"] for w in get(plane, "/v1/workflows/problems")["workflows"]}
    metrics = plane.call("GET", "/metrics").text
    assert "litefleet_observer_followers" in metrics and "litefleet_agents" in metrics

    plane.done("POST", f"/v1/tenants/{tenant}/hibernate")
    asleep = get(plane, f"/v1/tenants/{tenant}/workflows", limit=100)
    assert {w["id"] for w in asleep["workflows"]} == {*on_agent, "after"}, asleep
    assert {a["source"] for a in asleep["agents"]} == {"observer"}
    for workflow_id in ("after", *on_agent):
        found = get(plane, f"/v1/tenants/{tenant}/workflows/{workflow_id}")
        assert (found["source"], found["status"]) == ("observer", "SUCCESS"), found
    env = {**plane.env, "LITEFLEET_API_URL": plane.url}
    inspect = [sys.executable, "-m", "control_plane.cli", "inspect", tenant]
    shown = subprocess.run(inspect, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "observer" in shown.stdout and all(w in shown.stdout for w in on_agent), shown.stdout
    then = [*inspect, "--agent", "0", "--at", before.isoformat(), "--json"]
    past_cli = subprocess.run(then, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert past_cli.returncode == 0, past_cli.stderr
    assert json.loads(past_cli.stdout)["agents"][0]["freshness"]["generation"] == generation
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})
