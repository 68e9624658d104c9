"""Warm moves on two real node engines (Docker + SeaweedFS + Litestream): the new generation follows the old one's
replica (`litestream restore -f` in its own container) while the old one serves under a routed write load, then is
promoted after the old one's proven stop. Nothing acknowledged is lost, one container per agent is left, and the
operation's steps show the warm path and each agent's downtime. A cold move of the same tenant back is the
baseline, in the same run."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from control_plane.drivers.docker import DockerDriver
from infra.testbed import Testbed
from tests.e2e.conftest import ControlPlane, managed_containers, tenant_name
from tests.e2e.test_fleet import RoutedWriter, running, wait_for_writes, workflow_ids_on


def _steps(op: dict[str, Any], ordinal: int) -> list[str]:
    return [step["step"] for step in op["steps"] if step.get("agent") == ordinal]


def _assert_promoted_fast(testbed: Testbed, node_name: str, name: str) -> None:
    """The promotion came on the follower's stdin (the engine's attach, no exec), and the promoted follower serves
    in its own process (PID 1 is the entrypoint's Python, Litestream its child), as a pool container does."""
    node = next(node for node in testbed.nodes if node.name == node_name)
    container = DockerDriver(node.engine_url, tls=node.tls).client.containers.get(name)
    events = [
        json.loads(line)
        for line in container.logs(stdout=False, stderr=True).decode(errors="replace").splitlines()
        if line.startswith("{")
    ]
    promoted = [event for event in events if event.get("event") == "follower.promoted"]
    assert len(promoted) == 1 and promoted[0]["channel"] == "stdin", promoted
    pid1 = container.exec_run(["cat", "/proc/1/cmdline"]).output.split(b"\0")
    assert b"python" in pid1[0] and b"agent_image.container.entrypoint" in pid1, pid1


def test_warm_evacuation_under_write_load_loses_nothing(control_plane: ControlPlane, testbed: Testbed) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
    writer = RoutedWriter(plane, tenant, "w")
    writer.start()
    wait_for_writes(writer, 30)
    sources = {agent["ordinal"]: agent["node"] for agent in running(plane, tenant)}
    before, errors_before = len(writer.acknowledged), Counter(writer.errors)

    warm = plane.done("POST", f"/v1/tenants/{tenant}/evacuate", json={"strategy": "warm"})
    during = len(writer.acknowledged) - before
    for agent in running(plane, tenant):
        _assert_promoted_fast(testbed, agent["node"], f"lf-{tenant}-{agent['ordinal']}-g2")
    wait_for_writes(writer, len(writer.acknowledged) + 10)  # the promoted generation acknowledges writes too
    cold = plane.done("POST", f"/v1/tenants/{tenant}/evacuate", json={"strategy": "cold"})
    wait_for_writes(writer, len(writer.acknowledged) + 10)
    writer.stop.set()
    writer.join(65)

    for ordinal in (0, 1):
        assert _steps(warm, ordinal) == [
            "agent.following",
            "agent.caught_up",
            "agent.stopped",
            "agent.promoted",
            "agent.replicated",
            "agent.removed",
            "agent.moved",
        ], warm["steps"]
        assert _steps(cold, ordinal) == [
            "agent.stopped",
            "agent.started",
            "agent.replicated",
            "agent.removed",
            "agent.moved",
        ]
        # routed on ready (the downtime ends there), replicated after, the source removed only then
        for op in (warm, cold):
            at = {s["step"]: s for s in op["steps"] if s.get("agent") == ordinal}
            routed = at["agent.promoted" if op is warm else "agent.started"]["at"]
            assert routed <= at["agent.replicated"]["at"] <= at["agent.removed"]["at"]
            print(f"agent {ordinal}: routed with an empty replica: {at['agent.replicated']['routed_unreplicated']}")
    key = [f"{tenant}/0", f"{tenant}/1"]
    assert [warm["result"]["strategy"][k] for k in key] == ["warm", "warm"]
    warm_downtime = [warm["result"]["downtime_s"][k] for k in key]
    cold_downtime = [cold["result"]["downtime_s"][k] for k in key]
    print(f"warm evacuation downtime per agent {warm_downtime} s, cold {cold_downtime} s; {during} acknowledged")
    print(f"failed requests during the moves: {dict(writer.errors - errors_before)}")
    for op in (warm, cold):
        first = op["steps"][0]["at"]
        print([(s["step"], s.get("agent"), round(s["at"] - first, 2), s.get("seconds")) for s in op["steps"]])
    assert during > 0, "no write was acknowledged while the agents moved: the move was not under load"
    assert all(0 < d < 30 for d in warm_downtime + cold_downtime)

    moved = running(plane, tenant)
    assert [(a["ordinal"], a["generation"]) for a in moved] == [(0, 3), (1, 3)]
    assert all(a["node"] == sources[a["ordinal"]] for a in moved), "moved away, then back"
    held = set().union(*(workflow_ids_on(plane, agent, set(writer.acknowledged)) for agent in moved))
    lost = set(writer.acknowledged) - held
    assert not lost, f"{len(lost)} of {len(writer.acknowledged)} acknowledged workflows lost"
    containers = [name for names in managed_containers(testbed.nodes).values() for name in names]
    mine = sorted(name for name in containers if name.startswith(f"lf-{tenant}-"))
    assert mine == [f"lf-{tenant}-0-g3", f"lf-{tenant}-1-g3"], "exactly one container per agent"
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})
