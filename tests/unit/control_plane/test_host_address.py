"""host_address: where a node's containers reach this host, from the attribute shapes real engines answer."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.host_address import (
    HostAddressUnknown,
    _engine_host,
    bridge_gateway,
    interface_address,
    route_source,
)

OPTIONS = {
    "com.docker.network.bridge.default_bridge": "true",
    "com.docker.network.bridge.name": "docker0",
    "com.docker.network.driver.mtu": "1500",
}
# `docker network inspect bridge` of a freshly started Debian docker.io 20.10.24: no Gateway in IPAM
FRESH_ENGINE: dict[str, Any] = {
    "Name": "bridge",
    "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "172.17.0.0/16"}]},
    "Options": OPTIONS,
}


# the same engine restarted on a data root from earlier runs, and a test-bed engine started with --bip
def with_ipam(*configs: dict[str, str]) -> dict[str, Any]:
    return {**FRESH_ENGINE, "IPAM": {"Driver": "default", "Options": None, "Config": list(configs)}}


REUSED_STATE = with_ipam({"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"})
WITH_BIP = with_ipam({"Subnet": "172.30.11.0/24", "Gateway": "172.30.11.1"})


def no_interface(name: str) -> str | None:
    return None


def test_a_fresh_engine_without_gateway_uses_its_bridge_interface_address() -> None:
    asked: list[str] = []

    def interface(name: str) -> str | None:
        asked.append(name)
        return "172.17.0.1"

    assert bridge_gateway(FRESH_ENGINE, interface) == "172.17.0.1"
    assert asked == ["docker0"]


def test_a_fresh_engine_whose_interface_is_not_here_falls_back_to_the_subnets_first_host() -> None:
    assert bridge_gateway(FRESH_ENGINE, no_interface) == "172.17.0.1"


def test_a_recorded_gateway_wins_over_the_interface() -> None:
    assert bridge_gateway(REUSED_STATE, lambda name: "10.0.0.1") == "172.17.0.1"
    assert bridge_gateway(WITH_BIP, no_interface) == "172.30.11.1"


def test_ipv6_entries_are_skipped_and_a_bridge_without_any_ipv4_is_an_error() -> None:
    dual = with_ipam({"Subnet": "fd00::/64", "Gateway": "fd00::1"}, {"Subnet": "172.18.0.0/16"})
    assert bridge_gateway(dual, no_interface) == "172.18.0.1"
    with pytest.raises(HostAddressUnknown):
        bridge_gateway({"Name": "v6", "IPAM": {"Config": [{"Subnet": "fd00::/64"}]}, "Options": {}}, no_interface)


def test_engines_on_this_host_read_the_bridge_and_remote_engines_take_the_route() -> None:
    assert _engine_host("unix:///var/run/docker.sock") is None
    assert _engine_host("tcp://127.0.0.1:2375") is None
    assert _engine_host("tcp://localhost:2376") is None
    assert _engine_host("tcp://10.98.0.11:2376") == "10.98.0.11"
    assert _engine_host("ssh://root@10.98.0.12") == "10.98.0.12"


def test_route_source_and_interface_lookup_on_this_machine() -> None:
    assert route_source("127.0.0.1") == "127.0.0.1"
    assert interface_address("lo") == "127.0.0.1"
    assert interface_address("no-such-if0") is None
