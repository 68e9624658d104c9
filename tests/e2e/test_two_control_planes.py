"""Two control planes on one fleet DB (PostgreSQL in CI's first pass, the shared SQLite file in the second): both
claim work, and `kill -9` of the one running an evacuation lets the other finish it once the lease runs out."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from control_plane.timing import poll
from infra.testbed import Testbed
from tests.e2e.conftest import ControlPlane, managed_containers, tenant_name
from tests.e2e.test_fleet import RoutedWriter, running, workflow_ids_on


def second_control_plane(first: ControlPlane, state_dir: Path) -> ControlPlane:
    """Another control plane on `first`'s fleet DB, store and engines, with its own port, state dir and log."""
    database = first.env.get("LITEFLEET_DATABASE_URL") or (
        f"sqlite:///{Path(first.env['LITEFLEET_STATE_DIR']).resolve() / 'fleet.db'}"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **first.env,
        "LITEFLEET_STATE_DIR": str(state_dir),
        "LITEFLEET_DATABASE_URL": database,
        "LITEFLEET_API_PORT": str(port),
    }
    return ControlPlane(env, f"http://127.0.0.1:{port}", state_dir / "control-plane.log")


def ran_operation(plane: ControlPlane, op_id: str) -> int:
    """How many attempts of `op_id` this control plane started (from its JSON log)."""
    attempts = 0
    for line in plane.log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "operation.started" and entry.get("op") == op_id:
            attempts += 1
    return attempts


def test_the_other_control_plane_finishes_an_evacuation_after_kill_9(
    control_plane: ControlPlane, testbed: Testbed, tmp_path: Path
) -> None:
    first = control_plane
    second = second_control_plane(first, tmp_path)
    second.start(timeout=120)
    planes = [first, second]
    try:
        tenant = tenant_name()
        first.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
        acknowledged = RoutedWriter.burst(second, tenant, "two", 20)  # the second plane routes as well
        op = second.call("POST", f"/v1/tenants/{tenant}/evacuate").json()
        for _ in poll(60, 0.05):
            steps = first.call("GET", f"/v1/operations/{op['id']}").json()["steps"]
            if any(step["step"] == "agent.stopped" for step in steps):
                break
        else:
            raise AssertionError("the evacuation never stopped its first agent")
        owners = [plane for plane in planes if ran_operation(plane, op["id"])]
        assert len(owners) == 1, "exactly one control plane runs the operation"
        victim = owners[0]
        survivor = second if victim is first else first
        victim.kill9()  # mid-move: an old incarnation is stopped, its successor perhaps not started
        killed_at = time.monotonic()

        finished = survivor.wait_op(op["id"], timeout=300)
        took = time.monotonic() - killed_at
        assert finished["state"] == "succeeded", finished["error"]
        assert ran_operation(survivor, op["id"]) >= 1, "the survivor finished the operation itself"
        assert took < 120, f"the survivor needed {took:.1f} s after the kill"

        agents = running(survivor, tenant)
        assert [(a["ordinal"], a["generation"]) for a in agents] == [(0, 2), (1, 2)]
        containers = [name for names in managed_containers(testbed.nodes).values() for name in names]
        mine = sorted(name for name in containers if name.startswith(f"lf-{tenant}-"))
        assert mine == [f"lf-{tenant}-0-g2", f"lf-{tenant}-1-g2"], "exactly one container per agent"
        held = set().union(*(workflow_ids_on(survivor, agent, set(acknowledged)) for agent in agents))
        assert set(acknowledged) <= held, f"lost: {sorted(set(acknowledged) - held)}"
        survivor.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})
    finally:
        second.stop()
        if first.process is None or first.process.poll() is not None:
            first.start(timeout=120)  # the session's control plane serves the tests after this one
