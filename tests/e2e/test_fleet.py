"""The whole story on two real node engines: provision, scale with work in flight, evacuate under load, drain a
node, kill -9 the control plane mid-evacuation, and bad input that must change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import apsw
import httpx
import pytest

from control_plane.drivers import EngineUnreachable
from control_plane.drivers.agent_http import bearer
from control_plane.storage import ObjectStorage
from infra.testbed import Testbed
from tests.e2e.conftest import ControlPlane, managed_containers, tenant_name


class RoutedWriter(threading.Thread):
    """Starts `count(1)` workflows `{prefix}-0, -1, ...` through the control plane's router, one after another,
    retrying an id while the agent moves; remembers which ones were acknowledged (the monotonic counter), by which
    agent (ordinal) and when the answer arrived (`answered`), and counts every answer that was not an
    acknowledgement, by its code (`errors`)."""

    def __init__(self, plane: ControlPlane, tenant: str, prefix: str, timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.plane, self.tenant, self.prefix, self.timeout = plane, tenant, prefix, timeout
        self.acknowledged: list[str] = []
        self.answered: dict[str, tuple[int, float]] = {}
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        headers = bearer(self.plane.env["LITEFLEET_API_TOKEN"])
        # by default longer than the router's hold_timeout (45 s in conftest): a start held while its agent moves
        # is answered
        with httpx.Client(base_url=self.plane.url, headers=headers, timeout=self.timeout) as client:
            while not self.stop.is_set():
                workflow_id = f"{self.prefix}-{len(self.acknowledged)}"
                try:
                    answer = client.post(
                        f"/v1/tenants/{self.tenant}/workflows/count", json={"id": workflow_id, "args": [1]}
                    )
                except httpx.HTTPError as exc:
                    self.errors[type(exc).__name__] += 1
                    time.sleep(0.05)  # the agent is moving: try the same id again
                    continue
                if answer.status_code in (200, 201):
                    self.answered[workflow_id] = (int(answer.json().get("agent", -1)), time.time())
                    self.acknowledged.append(workflow_id)
                else:
                    self.errors[f"{answer.status_code} {_code(answer)}"] += 1
                    time.sleep(0.05)

    def by(self, ordinal: int, after: float = 0.0) -> set[str]:
        """The ids agent `ordinal` acknowledged, those answered after `after` only."""
        return {id_ for id_, (agent, at) in list(self.answered.items()) if agent == ordinal and at > after}

    @classmethod
    def burst(cls, plane: ControlPlane, tenant: str, prefix: str, count: int) -> list[str]:
        """Write until `count` workflows are acknowledged, then stop; returns their ids."""
        writer = cls(plane, tenant, prefix)
        writer.start()
        wait_for_writes(writer, count)
        writer.stop.set()
        writer.join(10)
        return writer.acknowledged


def _code(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("code"))
    except ValueError:
        return "not-json"


def wait_for_writes(writer: RoutedWriter, count: int, timeout: float = 60) -> None:
    """Until `count` workflows are acknowledged in all: the load a test's claim depends on really happened."""
    deadline = time.monotonic() + timeout
    while len(writer.acknowledged) < count:
        assert writer.is_alive(), "the writer stopped"
        assert time.monotonic() < deadline, f"only {len(writer.acknowledged)} of {count} writes in {timeout}s"
        time.sleep(0.02)


def agents_of(plane: ControlPlane, tenant: str) -> list[dict[str, Any]]:
    placements: list[dict[str, Any]] = plane.call("GET", f"/v1/tenants/{tenant}").json()["placements"]
    return placements


def running(plane: ControlPlane, tenant: str) -> list[dict[str, Any]]:
    return [agent for agent in agents_of(plane, tenant) if agent["state"] == "running"]


def workflow_ids_on(plane: ControlPlane, agent: dict[str, Any], among: set[str]) -> set[str]:
    """The ids of `among` that one agent (a placement of the API) holds, asked with its own token: its list (at
    most 1,000 workflows, the agent's page), then each id of `among` the list did not show, one by one (a fast
    writer acknowledges more than 1,000 in a test: a list alone read those beyond it as lost)."""
    token = plane.agent_token(agent["tenant"], agent["ordinal"])
    with httpx.Client(base_url=agent["url"], headers=bearer(token), timeout=30) as client:
        answer = client.get("/v1/workflows", params={"limit": 1000})
        assert answer.status_code == 200, answer.text
        held = {row["id"] for row in answer.json()["workflows"]} & among
        for workflow_id in sorted(among - held):
            found = client.get(f"/v1/workflows/{workflow_id}")
            assert found.status_code in (200, 404), found.text
            if found.status_code == 200:
                held.add(workflow_id)
    return held


def replicated_ids(admin: ObjectStorage, tenant: str, generation: int, into: Path) -> set[str]:
    """The workflow ids in agent 0's replica of `generation` now (empty before its first sync)."""
    try:
        db = admin.restore(admin.replica_url(tenant, 0, generation), into)
    except FileNotFoundError:
        return set()
    return {row[0] for row in apsw.Connection(str(db)).execute("SELECT id FROM workflow_state")}


def start(plane: ControlPlane, tenant: str, workflow_id: str, *args: Any) -> int:
    answer = plane.call("POST", f"/v1/tenants/{tenant}/workflows/count", json={"id": workflow_id, "args": list(args)})
    assert answer.status_code == 201, answer.text
    agent: int = answer.json()["agent"]
    return agent


def result(plane: ControlPlane, tenant: str, workflow_id: str) -> tuple[str, Any]:
    found = plane.call("GET", f"/v1/tenants/{tenant}/workflows/{workflow_id}", params={"wait": 60}).json()
    return found["status"], found["result"]


def test_three_tenants_spread_and_a_scale_cycle_with_work_in_flight(
    control_plane: ControlPlane, testbed: Testbed, admin: ObjectStorage, tmp_path: Path
) -> None:
    plane = control_plane
    tenants = [tenant_name() for _ in range(3)]
    for tenant in tenants:
        plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 1, "sync_interval": 0.2})
    nodes_used = {running(plane, tenant)[0]["node"] for tenant in tenants}
    assert nodes_used == {node.name for node in testbed.nodes}, "3 tenants on 2 nodes use both"
    for tenant in tenants:
        start(plane, tenant, "hello", 3, 0.0)
        assert result(plane, tenant, "hello") == ("SUCCESS", 3)
    deadline = time.monotonic() + 30  # the health monitor records each agent's replication as it reports it
    while not all((running(plane, t)[0]["replica_txid"] or 0) >= 1 for t in tenants):
        assert time.monotonic() < deadline, agents_of(plane, tenants[0])
        time.sleep(0.5)
    probed = running(plane, tenants[0])[0]
    assert probed["ready"] is True and probed["lag_txids"] is not None and probed["probed_at"] is not None

    tenant = tenants[0]
    expected: dict[str, int] = {}
    for i in range(4):
        start(plane, tenant, f"before-{i}", 15, 0.1)
        expected[f"before-{i}"] = sum(range(15))
    plane.done("POST", f"/v1/tenants/{tenant}/scale", json={"agents": 3})
    assert [a["ordinal"] for a in running(plane, tenant)] == [0, 1, 2]
    assert len({a["node"] for a in running(plane, tenant)}) == 2, "a tenant's agents are spread over nodes"
    on_agent: dict[str, int] = {}
    for i in range(12):
        on_agent[f"during-{i}"] = start(plane, tenant, f"during-{i}", 10, 0.1)
        expected[f"during-{i}"] = sum(range(10))
    assert set(on_agent.values()) == {0, 1, 2}
    plane.done("POST", f"/v1/tenants/{tenant}/scale", json={"agents": 1})  # drains 2 and 1, their work finishes
    assert [a["ordinal"] for a in running(plane, tenant)] == [0]

    start(plane, tenant, "long", 40, 0.25)  # 10 s: still in flight when hibernation's drain deadline (5 s) passes
    expected["long"] = sum(range(40))
    plane.done("POST", f"/v1/tenants/{tenant}/hibernate")
    assert running(plane, tenant) == []
    assert all(agent["state"] == "retained" for agent in agents_of(plane, tenant))
    plane.done("POST", f"/v1/tenants/{tenant}/scale", json={"agents": 1})  # wake: agent 0 restores its replica

    for workflow_id, value in expected.items():
        if on_agent.get(workflow_id, 0) == 0:
            assert result(plane, tenant, workflow_id) == ("SUCCESS", value), workflow_id
    for ordinal in (1, 2):  # retired agents: their replicas hold their finished work
        generation = next(a["generation"] for a in agents_of(plane, tenant) if a["ordinal"] == ordinal)
        db = admin.restore(admin.replica_url(tenant, ordinal, generation), tmp_path / f"agent-{ordinal}.db")
        rows = dict(apsw.Connection(str(db)).execute("SELECT id, status || ':' || output FROM workflow_state"))
        for workflow_id, agent in on_agent.items():
            if agent == ordinal:
                assert rows[workflow_id] == f"SUCCESS:{expected[workflow_id]}", workflow_id
    for tenant in tenants[1:]:
        plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


@pytest.mark.parametrize("run", range(10))
def test_evacuate_under_write_load_loses_nothing(control_plane: ControlPlane, testbed: Testbed, run: int) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 1, "sync_interval": 0.2})
    source = running(plane, tenant)[0]["node"]
    target = next(node.name for node in testbed.nodes if node.name != source)
    writer = RoutedWriter(plane, tenant, f"r{run}")
    writer.start()
    wait_for_writes(writer, 30)
    before_move, errors_before = len(writer.acknowledged), Counter(writer.errors)
    op = plane.done("POST", f"/v1/tenants/{tenant}/evacuate", json={"to_node": target})
    during_move = len(writer.acknowledged) - before_move
    wait_for_writes(writer, len(writer.acknowledged) + 10)  # and the new generation acknowledges writes too
    writer.stop.set()
    writer.join(65)
    errors_during = writer.errors - errors_before
    print(f"evacuation under load: {during_move} acknowledged during the move, failed requests: {dict(errors_during)}")
    assert during_move > 0, "no write was acknowledged while the agent moved: the move was not under load"
    assert not errors_during, f"the router failed requests while the agent moved (they are held): {errors_during}"

    moved = running(plane, tenant)
    assert [(a["node"], a["generation"]) for a in moved] == [(target, 2)]
    lost = set(writer.acknowledged) - workflow_ids_on(plane, moved[0], set(writer.acknowledged))
    assert not lost, f"{len(lost)} of {len(writer.acknowledged)} acknowledged workflows lost"
    downtime = op["result"]["downtime_s"][f"{tenant}/0"]
    assert 0 < downtime < 30
    assert not any(name.startswith(f"lf-{tenant}-") for name in managed_containers(testbed.nodes)[source])
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


def test_kill_9_control_plane_mid_evacuation_converges(control_plane: ControlPlane, testbed: Testbed) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
    acknowledged = RoutedWriter.burst(plane, tenant, "k", 20)
    op = plane.call("POST", f"/v1/tenants/{tenant}/evacuate").json()
    deadline = time.monotonic() + 60
    while not any(
        step["step"] == "agent.stopped" for step in plane.call("GET", f"/v1/operations/{op['id']}").json()["steps"]
    ):
        assert time.monotonic() < deadline, "evacuation never stopped the first agent"
        time.sleep(0.05)
    plane.kill9()  # the old incarnation is stopped, the new one not yet started
    plane.start()
    finished = plane.wait_op(op["id"])
    assert finished["state"] == "succeeded", finished["error"]
    assert finished["attempts"] >= 2

    agents = running(plane, tenant)
    assert [(a["ordinal"], a["generation"]) for a in agents] == [(0, 2), (1, 2)]
    containers = [name for names in managed_containers(testbed.nodes).values() for name in names]
    mine = sorted(name for name in containers if name.startswith(f"lf-{tenant}-"))
    assert mine == [f"lf-{tenant}-0-g2", f"lf-{tenant}-1-g2"], "exactly one container per agent"
    held = set().union(*(workflow_ids_on(plane, agent, set(acknowledged)) for agent in agents))
    assert set(acknowledged) <= held
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


def test_drain_node_moves_everything_off(control_plane: ControlPlane, testbed: Testbed) -> None:
    plane = control_plane
    tenants = [tenant_name() for _ in range(2)]
    for tenant in tenants:
        plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
        start(plane, tenant, "kept", 3, 0.0)
        assert result(plane, tenant, "kept") == ("SUCCESS", 3)
    drained = testbed.nodes[0].name
    plane.done("POST", f"/v1/nodes/{drained}/drain")
    node = plane.call("GET", f"/v1/nodes/{drained}").json()
    assert (node["state"], node["agents"]) == ("cordoned", 0)
    assert managed_containers(testbed.nodes)[drained] == []
    for tenant in tenants:
        assert {a["node"] for a in running(plane, tenant)} == {testbed.nodes[1].name}
        assert result(plane, tenant, "kept") == ("SUCCESS", 3)
    plane.call("POST", f"/v1/nodes/{drained}/uncordon")
    for tenant in tenants:
        plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


PROBE_FIELDS = (
    "probed_at",
    "ready",
    "local_txid",
    "replica_txid",
    "lag_txids",
    "seconds_since_sync",
    "unconfirmed_commits",
    "updated_at",
)
# the store-side measurement (the lag sampler, every 2 s) and what is computed from it at read time
LAG_FIELDS = ("lag_seconds", "synced_at", "replica_checked_at", "replication", "replication_note")


def without_probes(tenants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tenants as an operation leaves them: without what the health monitor and the lag sampler refresh."""
    return [
        {
            **{k: v for k, v in tenant.items() if k != "replication"},
            "placements": [
                {k: v for k, v in p.items() if k not in PROBE_FIELDS + LAG_FIELDS} for p in tenant["placements"]
            ],
        }
        for tenant in tenants
    ]


def test_bad_input_is_refused_and_changes_nothing(control_plane: ControlPlane, testbed: Testbed) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 1})
    plane.call("POST", f"/v1/nodes/{testbed.nodes[1].name}/cordon")
    before = (plane.call("GET", "/v1/tenants").json()["items"], plane.call("GET", "/v1/nodes").json()["items"])
    ops_before = len(plane.call("GET", "/v1/operations", params={"limit": 1000}).json()["items"])

    cases = [
        ("POST", "/v1/tenants/no-such-tenant/scale", {"agents": 1}, 404, "tenant_not_found"),
        ("POST", "/v1/tenants", {"name": "Not_A_Name", "agents": 1}, 422, "invalid_request"),
        ("POST", f"/v1/tenants/{tenant}/scale", {"agents": -1}, 422, "invalid_request"),
        ("POST", f"/v1/tenants/{tenant}/evacuate", {"to_node": testbed.nodes[1].name}, 409, "node_not_ready"),
        ("POST", f"/v1/tenants/{tenant}/evacuate", {"to_node": "no-such-node"}, 404, "node_not_found"),
        ("POST", "/v1/nodes", {"name": "ghost", "engine_url": "tcp://127.0.0.1:9"}, 422, "engine_unreachable"),
        ("POST", "/v1/tenants", {"name": tenant, "agents": 1}, 409, "tenant_exists"),
        ("POST", "/v1/tenants", {"name": tenant_name(), "agents": 64, "memory_mb": 16384}, 409, "no_capacity"),
    ]
    for method, path, body, status, code in cases:
        answer = plane.call(method, path, json=body)
        assert (answer.status_code, answer.json().get("code")) == (status, code), (path, body, answer.text)
        assert answer.json()["message"]

    plane.call("POST", f"/v1/nodes/{testbed.nodes[1].name}/uncordon")
    after_nodes = plane.call("GET", "/v1/nodes").json()["items"]
    for node in before[1]:
        node.pop("last_seen_at")
        node["state"] = "ready"
    for node in after_nodes:
        node.pop("last_seen_at")
    assert without_probes(plane.call("GET", "/v1/tenants").json()["items"]) == without_probes(before[0])
    assert after_nodes == before[1]
    assert len(plane.call("GET", "/v1/operations", params={"limit": 1000}).json()["items"]) == ops_before
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


def test_a_partitioned_node_fails_over_and_its_zombie_is_removed_when_it_returns(
    control_plane: ControlPlane, testbed: Testbed, admin: ObjectStorage, tmp_path: Path
) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 1, "sync_interval": 0.2})
    lost = next(node for node in testbed.nodes if node.name == running(plane, tenant)[0]["node"])
    survivor = next(node for node in testbed.nodes if node is not lost)
    acknowledged = RoutedWriter.burst(plane, tenant, "f", 20)
    probes = iter(range(1000))
    deadline = time.monotonic() + 60
    while not set(acknowledged) <= replicated_ids(admin, tenant, 1, tmp_path / f"probe-{next(probes)}.db"):
        assert time.monotonic() < deadline, "the burst never reached the replica"
        time.sleep(0.2)
    replicated_at = time.time()
    while (running(plane, tenant)[0]["probed_at"] or 0) < replicated_at:  # and the health monitor probed since
        assert time.monotonic() < deadline, "no health probe after the burst was replicated"
        time.sleep(0.2)

    subprocess.run(["ip", "link", "set", lost.veth, "down"], check=True)  # the node vanishes, its agent lives on
    try:
        deadline = time.monotonic() + 120
        failover: dict[str, Any] | None = None
        while failover is None or failover["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, f"no fail-over finished: {failover}"
            time.sleep(0.5)
            ops = plane.call("GET", "/v1/operations", params={"limit": 50}).json()["items"]
            failover = next((op for op in ops if op["kind"] == "failover" and op["node"] == lost.name), None)
        assert failover["state"] == "succeeded", failover["error"]
        assert plane.call("GET", f"/v1/nodes/{lost.name}").json()["state"] == "down"
        moved = running(plane, tenant)
        assert [(a["node"], a["generation"]) for a in moved] == [(survivor.name, 2)]
        assert set(acknowledged) <= workflow_ids_on(plane, moved[0], set(acknowledged))
        assert failover["result"]["restored_txid"][f"{tenant}/0"] >= 1
        assert failover["result"]["loss_window_s"][f"{tenant}/0"] is not None
        loss = failover["result"]["loss"][f"{tenant}/0"]
        # the burst was replicated and probed before the node vanished: the store confirmed a sync after it, and
        # nothing the agent reported is missing from the replica (no "at least 0": the key is there only for a loss)
        assert loss["confirmed_synced_at"] is not None and loss["may_be_lost_after"] == loss["confirmed_synced_at"]
        assert "lost_txids_at_least" not in loss and "may be lost" in loss["statement"]
        steps = {step["step"]: step for step in failover["steps"]}
        # invariant 6: gen 2 started only after gen 1's lease (6 s in this fleet, +1 s) ran out from CURRENT's move
        waited = steps["agent.lease_waited"]
        assert waited["not_before"] == pytest.approx(waited["current_written_at"] + 7, abs=0.01)
        assert steps["agent.started"]["at"] - steps["agent.started"]["seconds"] >= waited["not_before"] - 0.01
    finally:
        subprocess.run(["ip", "link", "set", lost.veth, "up"], check=True)

    def zombie_left() -> bool:
        try:
            return any(name.startswith(f"lf-{tenant}-") for name in managed_containers([lost])[lost.name])
        except EngineUnreachable:
            return True  # the link is back, the engine's connections are not yet

    deadline = time.monotonic() + 60  # the node answers again: its zombie container goes away, the node is ready
    while zombie_left() or plane.call("GET", f"/v1/nodes/{lost.name}").json()["state"] != "ready":
        assert time.monotonic() < deadline, f"not back: zombie left={zombie_left()}, node {lost.name} not ready"
        time.sleep(0.5)
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


def test_the_cli_follows_operations_and_answers_bad_input_in_one_line(control_plane: ControlPlane) -> None:
    env = {**control_plane.env, "LITEFLEET_API_URL": control_plane.url}
    tenant = tenant_name()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "control_plane.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    created = cli("tenants", "create", tenant, "--agents", "1", "--sync-interval", "0.2")
    assert created.returncode == 0, created.stderr
    assert "agent.started agent 0" in created.stdout and f"operation {created.stdout.split()[1]}" in created.stdout
    shown = cli("tenants", "get", tenant)
    assert shown.returncode == 0 and "running" in shown.stdout and "GENERATION" in shown.stdout
    started = cli("wf", "start", tenant, "count", "--args", "[4]", "--id", "cli-1")
    assert started.returncode == 0 and '"id": "cli-1"' in started.stdout
    as_json = cli("ops", "ls", "--tenant", tenant, "--json")
    assert as_json.returncode == 0 and '"kind": "provision"' in as_json.stdout

    refused = cli("tenants", "scale", "no-such-tenant", "2")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.strip().splitlines() == ["error: tenant_not_found: no tenant named 'no-such-tenant'"]
    bad_args = cli("wf", "start", tenant, "count", "--args", "not json")
    assert bad_args.returncode == 2 and len(bad_args.stderr.strip().splitlines()) == 1
    gone = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "tenants", "ls"],
        env={**env, "LITEFLEET_API_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gone.returncode == 3 and "does not answer" in gone.stderr and "Traceback" not in gone.stderr

    deleted = cli("tenants", "delete", tenant, "--purge")
    assert deleted.returncode == 0, deleted.stderr
    assert "tenant.purged" in deleted.stdout


def test_secrets_stay_out_of_logs_errors_and_api_answers(control_plane: ControlPlane, testbed: Testbed) -> None:
    """No secret in `docker inspect` (env, command, entrypoint, labels) of any agent container; the secrets the
    fleet DB holds for them (S3 keys, agent tokens, the tenant's admin token) never in a log or an API answer."""
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
    plane.done("POST", f"/v1/tenants/{tenant}/evacuate")
    rows = plane.agent_secrets(tenant)
    assert len(rows) == 2 and len({row["tenant_admin_token"] for row in rows}) == 1
    secrets_in_use = [plane.env["LITEFLEET_S3_ADMIN_SECRET"], rows[0]["tenant_admin_token"]]
    for row in rows:
        assert row["admin_token"] == row["tenant_admin_token"]  # per tenant, handed to each of its agents
        secrets_in_use += [row["agent_token"], row["secret_key"]]
    assert all(secrets_in_use) and len(set(secrets_in_use)) == len(secrets_in_use)
    containers = []
    for node in testbed.nodes:
        client = node.client(timeout=30)
        containers += client.containers.list(filters={"name": f"lf-{tenant}-"})
    assert len(containers) == 2
    for container in containers:
        config = container.attrs["Config"]
        env = dict(line.split("=", 1) for line in config["Env"])
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
        shown = json.dumps(container.attrs)  # Env, Cmd, Entrypoint, Labels, HostConfig, ...
        logged = container.logs().decode(errors="replace")
        for secret in secrets_in_use:
            assert secret not in shown and secret not in logged
    answers = "".join(
        plane.call("GET", path, params={"limit": 1000}).text
        for path in ("/v1/tenants", f"/v1/tenants/{tenant}", "/v1/operations", "/v1/events", "/v1/nodes")
    )
    log = plane.log.read_text()
    for secret in secrets_in_use:
        assert secret not in answers and secret not in log
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})


def test_agents_refuse_callers_without_their_token_while_the_router_works(control_plane: ControlPlane) -> None:
    plane = control_plane
    tenant, other = tenant_name(), tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 2, "sync_interval": 0.2})
    plane.done("POST", "/v1/tenants", json={"name": other, "agents": 1, "sync_interval": 0.2})
    start(plane, tenant, "routed-1", 1)  # the router sends each agent its own token
    assert result(plane, tenant, "routed-1") == ("SUCCESS", 0)
    mine, theirs = plane.agent_secrets(tenant), plane.agent_secrets(other)[0]
    for agent in mine:
        url = agent["url"]
        for headers in ({}, bearer(theirs["agent_token"]), bearer(theirs["admin_token"])):
            for method, path in (("GET", "/v1/workflows"), ("POST", "/v1/workflows/count"), ("GET", "/readyz")):
                refused = httpx.request(method, f"{url}{path}", headers=headers, json={"args": [1]}, timeout=10)
                assert refused.status_code == 401, (method, path, refused.text)
            assert httpx.post(f"{url}/admin/drain", headers=headers, timeout=10).status_code == 401
        assert httpx.post(f"{url}/admin/drain", headers=bearer(agent["agent_token"]), timeout=10).status_code == 403
        assert httpx.get(f"{url}/v1/workflows", headers=bearer(agent["agent_token"]), timeout=10).status_code == 200
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    # issue 10: an id is one path segment on the agent, never another route (this used to list another agent)
    sneaky = plane.call(
        "POST", f"/v1/tenants/{tenant}/workflows/count", json={"id": "../../v1/workflows?limit=1000&", "args": [1]}
    )
    assert "workflows" not in sneaky.json() and "routed-1" not in sneaky.text, sneaky.text
    for name in (tenant, other):
        plane.done("DELETE", f"/v1/tenants/{name}", params={"purge": "true"})


def test_an_agent_stopped_behind_our_back_is_started_again(control_plane: ControlPlane, testbed: Testbed) -> None:
    plane = control_plane
    tenant = tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": tenant, "agents": 1, "sync_interval": 0.2})
    acknowledged = RoutedWriter.burst(plane, tenant, "s", 10)
    agent = running(plane, tenant)[0]
    node = next(node for node in testbed.nodes if node.name == agent["node"])
    node.client().containers.get(f"lf-{tenant}-0-g1").stop(timeout=30)

    deadline = time.monotonic() + 60
    repair: dict[str, Any] | None = None
    while repair is None or repair["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"no repair: {repair}"
        time.sleep(0.5)
        ops = plane.call("GET", "/v1/operations", params={"tenant": tenant}).json()["items"]
        repair = next((op for op in ops if op["params"].get("repair")), None)
    assert repair["state"] == "succeeded", repair["error"]
    assert "agent.restarted" in [step["step"] for step in repair["steps"]]
    again = running(plane, tenant)
    assert [(a["node"], a["generation"]) for a in again] == [(node.name, 1)]  # same incarnation, same volume
    assert set(acknowledged) <= workflow_ids_on(plane, again[0], set(acknowledged))
    plane.done("DELETE", f"/v1/tenants/{tenant}", params={"purge": "true"})
