"""A hostile tenant on the real test bed: from inside its own agent container it tries every route to what a tenant
must never reach (other tenants' agents on its node and on the other one, node engines, the store's non-S3 ports
and filer paths, other tenants' prefixes with its own S3 key, the control plane, a metadata address), and each
attempt fails; its own S3 prefix and the router's path to it still work.

Every target is the test bed's own: the metadata address is a dummy interface inside the node's namespace. The
same probe from a container on the node's default bridge (no isolation) reaches the targets that are live, so a
refusal is the isolation's doing, not a dead target's."""

from __future__ import annotations

import secrets
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest

from control_plane.drivers.network import TenantNetwork
from control_plane.storage import ObjectStorage
from control_plane.storage.seaweed import EmbeddedStore
from infra.testbed import Testbed, TestbedNode
from tests.e2e.conftest import BUCKET, ControlPlane, tenant_name

BLOCKED = "timeout"  # what a DROP rule looks like from inside: the SYN goes unanswered
LIVE_FROM_NODE = (
    "victim agent, same node, container address",
    "victim agent, same node, published port",
    "engine TLS, own node",
    "engine TLS, other node",
    "store S3 gRPC",
    "metadata",
)
LIVE_FROM_DEFAULT_BRIDGE = (
    "victim agent, same node, published port",
    "victim agent, other node, published port",
    "engine TLS, own node",
    "engine TLS, other node",
    "store S3 gRPC",
    "metadata",
)


def run_workflow(plane: ControlPlane, tenant: str, workflow: str, *args: Any) -> Any:
    workflow_id = f"{workflow}-{secrets.token_hex(3)}"
    answer = plane.call("POST", f"/v1/tenants/{tenant}/workflows/{workflow}", json={"id": workflow_id, "args": args})
    assert answer.status_code == 201, answer.text
    found = plane.call("GET", f"/v1/tenants/{tenant}/workflows/{workflow_id}", params={"wait": 60}).json()
    assert found["status"] == "SUCCESS", found
    return found["result"]


def placements(plane: ControlPlane, tenant: str) -> list[dict[str, Any]]:
    agents: list[dict[str, Any]] = plane.call("GET", f"/v1/tenants/{tenant}").json()["placements"]
    return [agent for agent in agents if agent["state"] == "running"]


def container_of(node: TestbedNode, tenant: str, ordinal: int) -> Any:
    (container,) = node.client().containers.list(
        filters={"label": [f"io.litefleet.tenant={tenant}", f"io.litefleet.agent={ordinal}"]}
    )
    return container


def ip_of(container: Any) -> str:
    (network,) = container.attrs["NetworkSettings"]["Networks"].values()
    address: str = network["IPAddress"]
    return address


PROBE = """
import json, socket, sys
found = {}
for label, host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=2).close(); found[label] = "connected"
    except TimeoutError: found[label] = "timeout"
    except OSError as exc: found[label] = exc.strerror or type(exc).__name__
print(json.dumps(found))
"""


def probe_from_default_bridge(node: TestbedNode, image: str, targets: list[list[Any]]) -> dict[str, str]:
    """The same TCP probe from an unisolated container on the node's default bridge (the baseline)."""
    import json

    output = node.client().containers.run(
        image, ["python3", "-c", PROBE, json.dumps(targets)], entrypoint=[], remove=True, user="10001"
    )
    found: dict[str, str] = json.loads(output)
    return found


def in_namespace(node: TestbedNode, host: str, port: int) -> str:
    """Connect from the node's own namespace (not a container): is the target live at all?"""
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3).close()"
    done = subprocess.run(["nsenter", f"--net=/run/netns/{node.name}", sys.executable, "-c", code], check=False)
    return "connected" if done.returncode == 0 else "failed"


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_a_hostile_tenant_reaches_nothing_but_its_own_s3_prefix(
    control_plane: ControlPlane,
    testbed: Testbed,
    store: EmbeddedStore,
    admin: ObjectStorage,
    image: str,
    runtime: str,
) -> None:
    """The same attacks from a tenant under runc and under gVisor (runsc registered with `--network=host`: its
    sockets live in the container's own network namespace, so the same per-tenant rules must hold)."""
    plane = control_plane
    victim, hostile = tenant_name(), tenant_name()
    plane.done("POST", "/v1/tenants", json={"name": victim, "agents": 2, "sync_interval": 0.2})
    hostile_spec = {"name": hostile, "agents": 1, "bundle": "tenants.hostile", "runtime": runtime}
    plane.done("POST", "/v1/tenants", json=hostile_spec)
    nodes = {node.name: node for node in testbed.nodes}
    (mine,) = placements(plane, hostile)
    home = nodes[mine["node"]]
    (away,) = [node for node in testbed.nodes if node is not home]
    by_node = {agent["node"]: agent for agent in placements(plane, victim)}
    assert set(by_node) == set(nodes), "the victim has an agent on each node"
    near, far = by_node[home.name], by_node[away.name]
    near_ip = ip_of(container_of(home, victim, near["ordinal"]))
    far_ip = ip_of(container_of(away, victim, far["ordinal"]))
    hostile_container = container_of(home, hostile, mine["ordinal"])
    assert hostile_container.attrs["HostConfig"]["Runtime"] == runtime
    own_network = TenantNetwork(BUCKET, hostile)
    assert list(hostile_container.attrs["NetworkSettings"]["Networks"]) == [own_network.name]
    own_gateway = home.client().networks.get(own_network.name).attrs["IPAM"]["Config"][0]["Gateway"]
    assert ip_of(hostile_container) not in (near_ip, far_ip)
    metadata = testbed.metadata_service(home)
    gateway, address = testbed.gateway, store.address
    api_port = urllib.parse.urlparse(plane.url).port

    def published(agent: dict[str, Any]) -> list[Any]:
        url = urllib.parse.urlparse(agent["url"])
        return [url.hostname, url.port]

    targets: list[list[Any]] = [
        ["victim agent, same node, container address", near_ip, 8080],
        ["victim agent, same node, published port", *published(near)],
        ["victim agent, other node, container address", far_ip, 8080],
        ["victim agent, other node, published port", *published(far)],
        ["engine TLS, own node", home.ip, 2376],
        ["engine TLS, other node", away.ip, 2376],
        ["engine plain, own node", home.ip, 2375],
        ["engine plain, other node", away.ip, 2375],
        ["engine TLS via own bridge gateway", own_gateway, 2376],
        ["store master", gateway, address.master_port],
        ["store volume", gateway, address.volume_port],
        ["store filer", gateway, address.filer_port],
        ["store master gRPC", gateway, address.master_port + 10000],
        ["store volume gRPC", gateway, address.volume_port + 10000],
        ["store filer gRPC", gateway, address.filer_port + 10000],
        ["store S3 gRPC", gateway, address.s3_port + 10000],
        ["control plane API", gateway, api_port],
        ["metadata", "169.254.169.254", 80],
    ]
    legit = [["store S3", gateway, address.s3_port]]

    # the live targets answer from the node itself, and the same probe from an unisolated container on the node's
    # default bridge reaches them: a refusal below is the isolation's doing, not a dead target's
    live = {label: [label, host, port] for label, host, port in targets}
    for label in LIVE_FROM_NODE:
        _, host, port = live[label]
        assert in_namespace(home, host, port) == "connected", label
    baseline = probe_from_default_bridge(home, image, [live[label] for label in LIVE_FROM_DEFAULT_BRIDGE])
    assert baseline == dict.fromkeys(LIVE_FROM_DEFAULT_BRIDGE, "connected"), baseline

    reached = run_workflow(plane, hostile, "probe", targets + legit, 2.0)
    assert {label: reached[label] for label, _, _ in targets} == {label: BLOCKED for label, _, _ in targets}
    assert reached["store S3"] == "connected"

    fetched = run_workflow(
        plane,
        hostile,
        "fetch",
        [
            ["filer identities", f"http://{gateway}:{address.filer_port}/etc/iam/identity.json"],
            ["filer buckets", f"http://{gateway}:{address.filer_port}/buckets/{BUCKET}/?pretty=y"],
            ["metadata", f"{metadata}latest/meta-data"],
        ],
        2.0,
    )
    assert fetched == {"filer identities": BLOCKED, "filer buckets": BLOCKED, "metadata": BLOCKED}

    def key(tenant: str, rest: str) -> str:
        return admin.agent_prefix(tenant, 0) + rest

    answers = run_workflow(
        plane,
        hostile,
        "s3",
        [
            ["own CURRENT", "GET", BUCKET, key(hostile, "CURRENT")],
            ["victim CURRENT", "GET", BUCKET, key(victim, "CURRENT")],
            ["overwrite victim CURRENT", "PUT", BUCKET, key(victim, "CURRENT")],
            ["write into victim replica", "PUT", BUCKET, key(victim, "gen-1/evil")],
            ["list the bucket", "GET", BUCKET, ""],
            ["overwrite own CURRENT", "PUT", BUCKET, key(hostile, "CURRENT")],
        ],
    )
    assert answers == {
        "own CURRENT": "200",
        "victim CURRENT": "403",
        "overwrite victim CURRENT": "403",
        "write into victim replica": "403",
        "list the bucket": "403",
        "overwrite own CURRENT": "403",
    }

    # the victim still works through the router
    assert run_workflow(plane, victim, "count", 2, 0.0) == 1

    # the hostile tenant's last agent leaves: its network and rules leave with it
    plane.done("DELETE", f"/v1/tenants/{hostile}", params={"purge": "true"})
    assert home.client().networks.list(names=[own_network.name]) == []
    rules = subprocess.run(
        ["nsenter", f"--net=/run/netns/{home.name}", "iptables-save", "-t", "filter"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert own_network.key not in rules
    plane.done("DELETE", f"/v1/tenants/{victim}", params={"purge": "true"})
