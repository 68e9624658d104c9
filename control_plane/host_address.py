"""The address a node's containers use to reach this host (where the embedded object store listens).

Written once, for `litefleet up`, the tests and the benchmarks. Three cases, each checked on real engines:
- the local engine (a unix socket, or TCP on loopback): its default bridge's gateway. A freshly started engine's
  IPAM config has no `Gateway` key (`[{"Subnet": "172.17.0.0/16"}]`) while `docker0` carries 172.17.0.1, so the
  bridge interface's own address is read when the key is missing; with `--bip` that address is the `--bip` one.
- an engine reached over the network (a namespaced test-bed node, a remote host): this host's source address on
  the route to the engine. The node's containers leave through the node (NAT), so that is the address at which
  they reach this host — the test bed's bridge address for its namespaced nodes.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import docker

BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
_SIOCGIFADDR = 0x8915

InterfaceAddress = Callable[[str], str | None]


class HostAddressUnknown(RuntimeError):
    """Neither the engine's bridge nor the route to it names an address containers could reach this host at."""


def host_address(engine_url: str, client: docker.DockerClient | None = None) -> str:
    """The IPv4 address containers on the engine at `engine_url` use to reach this host."""
    host = _engine_host(engine_url)
    if host is None:
        client = client or docker.DockerClient(base_url=engine_url, timeout=30)
        return bridge_gateway(client.networks.get("bridge").attrs, interface_address)
    return route_source(host)


def local_host_address() -> str:
    """`host_address` of the engine `docker.from_env()` talks to (DOCKER_HOST or the default socket)."""
    return host_address(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock", docker.from_env(timeout=30))


def bridge_gateway(bridge: Mapping[str, Any], interface: InterfaceAddress) -> str:
    """The gateway of a bridge network from its `docker network inspect` attributes: IPAM's `Gateway` when the
    engine recorded one, else the address of the bridge interface named in its options, else the subnet's first
    host (Docker's own default when it picks the gateway)."""
    configs = (bridge.get("IPAM") or {}).get("Config") or []
    for config in configs:
        gateway = config.get("Gateway")
        if gateway and _is_ipv4(gateway):
            return str(gateway).split("/")[0]
    name = (bridge.get("Options") or {}).get(BRIDGE_NAME_OPTION)
    if name:
        address = interface(name)
        if address:
            return address
    for config in configs:
        subnet = config.get("Subnet")
        if subnet and _is_ipv4(subnet):
            return str(next(ipaddress.ip_network(subnet, strict=False).hosts()))
    raise HostAddressUnknown(f"bridge network {bridge.get('Name', '?')!r} has no IPv4 gateway or subnet")


def interface_address(name: str) -> str | None:
    """The IPv4 address of network interface `name` in this network namespace, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(answer[20:24])


def route_source(host: str) -> str:
    """This host's source address on the route to `host` (a UDP connect sends nothing; it only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, 9))
        except OSError as exc:
            raise HostAddressUnknown(f"no route to engine host {host}") from exc
        return str(sock.getsockname()[0])


def _engine_host(engine_url: str) -> str | None:
    """The remote host of an engine URL, or None for an engine on this host (unix socket, loopback TCP)."""
    parsed = urlparse(engine_url)
    if parsed.scheme in ("", "unix", "http+unix", "npipe"):
        return None
    host = parsed.hostname or ""
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as exc:
        raise HostAddressUnknown(f"cannot resolve the engine host of {parsed.scheme}://{host}") from exc
    return None if address.is_loopback else str(address)


def _is_ipv4(value: str) -> bool:
    try:
        return ipaddress.ip_network(value, strict=False).version == 4
    except ValueError:
        return False
