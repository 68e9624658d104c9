"""Faults on the real test bed (issue 11): the object store frozen (SIGSTOP of the SeaweedFS processes the `store`
fixture started, by their pids) while a tenant is evacuated under a writer that starts workflows through the
router. The tenant keeps serving, the operation refuses (or rolls back) with a stable code, a retry after the
store returns succeeds, and every acknowledged workflow is in the current generation afterwards."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from control_plane.storage.seaweed import EmbeddedStore
from infra.testbed import Testbed
from tests.e2e.conftest import ControlPlane, frozen, managed_containers, tenant_name
from tests.e2e.test_fleet import RoutedWriter, running, wait_for_writes, workflow_ids_on


def evacuate(plane: ControlPlane, tenant: str) -> dict[str, Any]:
    op: dict[str, Any] = plane.client.wait("POST", f"/v1/tenants/{tenant}/evacuate", json_body={}, timeout=240)
    return op


def test_evacuation_while_the_store_is_frozen_keeps_the_tenant_serving_and_loses_nothing(
    control_plane: ControlPlane, testbed: Testbed, store: EmbeddedStore
) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
    before = {(a["ordinal"], a["node"], a["generation"]) for a in running(plane, tenant)}
    writer = RoutedWriter(plane, tenant, "z")
    writer.start()
    wait_for_writes(writer, 5)

    # 1. the store is frozen before the evacuation: it is refused before anything stops
    errors_before = Counter(writer.errors)
    with frozen(store):
        began, acked_before = time.monotonic(), len(writer.acknowledged)
        refused = evacuate(plane, tenant)
        refused_in = time.monotonic() - began
        acked_while_frozen = len(writer.acknowledged) - acked_before
    errors_while_frozen = writer.errors - errors_before
    assert refused["state"] == "failed", refused
    assert refused["result"]["error_code"] == "store_unreachable", refused["error"]
    assert refused["error"].startswith("store_unreachable: object store does not answer")
    steps = [step["step"] for step in refused["steps"]]
    assert "agent.stopped" not in steps and steps[-2:] == ["operation.refused", "operation.failed"]
    assert {(a["ordinal"], a["node"], a["generation"]) for a in running(plane, tenant)} == before
    assert acked_while_frozen > 0, "the agents acknowledged writes while the store was frozen"
    print(f"refused in {refused_in:.2f}s; while frozen: {acked_while_frozen} acknowledged, {errors_while_frozen}")
    assert not errors_while_frozen, f"the router failed writes while the evacuation was refused: {errors_while_frozen}"

    # 2. the store is back: the same request succeeds, one agent at a time
    wait_for_writes(writer, len(writer.acknowledged) + 3)
    moved = evacuate(plane, tenant)
    assert moved["state"] == "succeeded", moved["error"]
    assert moved["result"]["moved"] == 2
    wait_for_writes(writer, len(writer.acknowledged) + 3)  # and the new generation acknowledges writes
    writer.stop.set()
    writer.join(15)

    agents = running(plane, tenant)
    assert sorted((a["ordinal"], a["generation"]) for a in agents) == [(0, 2), (1, 2)]
    held = set().union(*(workflow_ids_on(plane, agent, set(writer.acknowledged)) for agent in agents))
    lost = set(writer.acknowledged) - held
    assert not lost, f"{len(lost)} of {len(writer.acknowledged)} acknowledged workflows lost: {sorted(lost)[:5]}"
    down = [step for step in moved["steps"] if step["step"] in ("agent.stopped", "agent.removed")]
    assert [s["step"] for s in down] == ["agent.stopped", "agent.removed"] * 2, "one agent down at a time"
    # the router kept serving: never "no agent running" (only a request in flight to the agent being stopped
    # may fail, and is retried; counted and printed)
    print(f"router errors over the whole test: {dict(writer.errors)}; acknowledged: {len(writer.acknowledged)}")
    assert not [code for code in writer.errors if "no_agent_running" in code], writer.errors
    mine = [n for names in managed_containers(testbed.nodes).values() for n in names if n.startswith(f"lf-{tenant}-")]
    assert sorted(mine) == [f"lf-{tenant}-0-g2", f"lf-{tenant}-1-g2"]
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


def test_a_move_whose_new_generation_cannot_start_rolls_back_and_a_retry_succeeds(
    control_plane: ControlPlane, testbed: Testbed
) -> None:
    """A real failure after the old incarnation stopped: the target is a node whose engine answers (the preflight
    passes) but whose publish address exists nowhere, so the new generation's container cannot start. The old
    incarnation starts again in place (same generation, node, volume), the other agent is never stopped, and
    after the broken node is gone the same evacuation succeeds with every acknowledged workflow."""
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
    before = {(a["ordinal"], a["node"], a["generation"]) for a in running(plane, tenant)}
    engine_of = testbed.nodes[1]
    broken = f"broken-{tenant}"
    plane.register(broken, engine_of.engine_url, engine_of.ip.rsplit(".", 1)[0] + ".250", tls=engine_of.tls_name)
    writer = RoutedWriter(plane, tenant, "b")
    writer.start()
    try:
        wait_for_writes(writer, 5)
        failed: dict[str, Any] = plane.client.wait(
            "POST", f"/v1/tenants/{tenant}/evacuate", json_body={"to_node": broken}, timeout=240
        )
        assert failed["state"] == "failed" and failed["result"]["error_code"] == "rolled_back", failed["error"]
        steps = [step["step"] for step in failed["steps"]]
        assert steps.count("agent.stopped") == 1, "the rollout stopped at the first failure"
        assert steps.index("agent.rolling_back") < steps.index("agent.rolled_back"), steps
        assert {(a["ordinal"], a["node"], a["generation"]) for a in running(plane, tenant)} == before
        wait_for_writes(writer, len(writer.acknowledged) + 3)  # the rolled-back agent serves again
    finally:
        assert plane.call("DELETE", f"/v1/nodes/{broken}").status_code == 204
    moved = evacuate(plane, tenant)
    assert moved["state"] == "succeeded", moved["error"]
    wait_for_writes(writer, len(writer.acknowledged) + 3)
    writer.stop.set()
    writer.join(15)
    agents = running(plane, tenant)
    held = set().union(*(workflow_ids_on(plane, agent, set(writer.acknowledged)) for agent in agents))
    lost = set(writer.acknowledged) - held
    assert not lost, f"{len(lost)} of {len(writer.acknowledged)} acknowledged workflows lost"
    print(f"rolled back: {failed['error']}; router errors: {dict(writer.errors)}")
    assert not [code for code in writer.errors if "no_agent_running" in code], writer.errors
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})
