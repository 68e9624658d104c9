"""The names and rules of a tenant's network isolation (the scripts are run for real by the e2e isolation test)."""

from __future__ import annotations

import re

import pytest

from control_plane.drivers.network import (
    DEFAULT_BLOCKED,
    Isolation,
    TenantNetwork,
    install_script,
    removal_script,
    tenant_isolation,
)


def test_names_fit_linux_and_iptables_limits_and_differ_per_fleet_and_tenant() -> None:
    network = TenantNetwork("litefleet", "t" * 40)
    assert len(network.bridge) <= 15  # IFNAMSIZ - 1
    assert len(network.input_chain) <= 28 and len(network.forward_chain) <= 28  # XT_EXTENSION_MAXNAMELEN - 1
    names = {TenantNetwork(f, t).bridge for f in ("a", "b") for t in ("acme", "globex")}
    assert len(names) == 4


def test_only_addresses_reach_the_script() -> None:
    with pytest.raises(ValueError):
        Isolation(("10.0.0.1; rm -rf /",), 8333)
    with pytest.raises(ValueError):
        Isolation(("10.0.0.1",), 8333, ("10.0.0.0/8 -j ACCEPT",))
    with pytest.raises(ValueError):
        Isolation(("10.0.0.1",), 0)


def test_the_s3_port_is_admitted_before_anything_is_dropped() -> None:
    network = TenantNetwork("fleet", "acme")
    script = install_script(network, Isolation(("10.94.0.1",), 8333))
    forward = [line for line in script.splitlines() if line.startswith(f"-A {network.forward_chain}")]
    assert "ESTABLISHED" in forward[0]
    assert forward[1] == f"-A {network.forward_chain} -p tcp -d 10.94.0.1/32 --dport 8333 -j RETURN"
    assert [line.split(" -d ")[1] for line in forward[2:]] == [f"{cidr} -j DROP" for cidr in DEFAULT_BLOCKED]
    local = [line for line in script.splitlines() if line.startswith(f"-A {network.input_chain}")]
    assert local[-1] == f"-A {network.input_chain} -j DROP" and "--dport 8333 -j ACCEPT" in local[1]
    # jumps are checked before they are inserted, and only for the tenant's bridge
    assert f"-C DOCKER-USER -i {network.bridge} -j {network.forward_chain} 2>/dev/null ||" in script
    assert f"-C INPUT -i {network.bridge} -j {network.input_chain} 2>/dev/null ||" in script


def test_removal_deletes_by_exact_spec_and_keeps_the_rules_of_a_bridge_that_exists() -> None:
    network = TenantNetwork("fleet", "acme")
    script = removal_script(network)
    assert script.startswith(f"if [ -e /sys/class/net/{network.bridge} ]; then")
    assert f"-D DOCKER-USER -i {network.bridge} -j {network.forward_chain}" in script
    assert f"-D INPUT -i {network.bridge} -j {network.input_chain}" in script
    assert not re.search(r"-F (INPUT|DOCKER-USER|FORWARD)\b", script)  # never flushes a chain it does not own


def test_isolation_follows_the_endpoint_and_blocks_a_public_node_address() -> None:
    private = tenant_isolation("http://10.94.0.1:8333", "10.94.0.11")
    assert private.s3_ips == ("10.94.0.1",) and private.s3_port == 8333 and private.blocked == DEFAULT_BLOCKED
    public = tenant_isolation("https://203.0.113.5", "198.51.100.7")
    assert public.s3_port == 443 and public.blocked[-1] == "198.51.100.7/32"
    assert Isolation.from_label(public.to_label()) == public
    assert tenant_isolation("http://localhost:8333", "node-a.example").s3_ips == ("127.0.0.1",)


def test_a_claimed_pool_containers_identity_is_its_name() -> None:
    from control_plane.drivers.agent_spec import incarnation_name
    from control_plane.drivers.names import parse_incarnation_name

    assert parse_incarnation_name(incarnation_name("acme-eu-2", 3, 12)) == ("acme-eu-2", 3, 12)
    assert parse_incarnation_name("/" + incarnation_name("a", 0, 1)) == ("a", 0, 1)
    for other in ("lfwarm-0123456789ab", "lf-acme-0-1", "lf-Acme-0-g1", "lf--0-g1", "lf-acme-x-g1"):
        assert parse_incarnation_name(other) is None
