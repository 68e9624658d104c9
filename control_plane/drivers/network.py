"""Network isolation of tenants on a node: one Docker bridge network per tenant, and the node's firewall rules for it.

What a node gets for each tenant that has agents on it (all named from one key, a hash of fleet and tenant):

- a Docker network `lf-<tenant>-<key>` (bridge interface `lft<key>`, `enable_icc=false`): the tenant's agents
  attach to it instead of the default bridge, so Docker's isolation chains keep other tenants' networks away and
  agents of one tenant cannot reach each other either;
- two iptables chains in the node's own network namespace, each reached by one jump rule for that interface:
  `INPUT -i lft<key> -j LF-<key>-IN` (to the node itself: replies, and the store's S3 port when the store runs on
  the node; everything else dropped: engines, metadata addresses, other store ports, published ports) and
  `DOCKER-USER -i lft<key> -j LF-<key>-FWD` (forwarded: replies, the S3 port; every private, link-local and
  shared range dropped: other nodes, the control plane, other tenants' containers, metadata).

Nodes are remote engines, so the rules go in through the engine itself: a short-lived helper container
(`HELPER_REPOSITORY`, the base image plus Debian's iptables) with the node's network namespace
(`network_mode=host`) and only NET_ADMIN and NET_RAW. It uses whichever iptables backend holds Docker's
DOCKER-USER chain (nft or legacy). Every command is safe to repeat: the chains are rebuilt whole with
`iptables-restore --noflush`, the jump rules are checked (`-C`) before they are inserted, and removal deletes by
exact spec, only once the tenant's bridge is gone."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from control_plane.drivers.images import DEFAULT_BASE, ImageError, ensure_base_image
from control_plane.drivers.names import parse_incarnation_name
from control_plane.drivers.sdk import errors as docker_errors

log = structlog.get_logger("control_plane.drivers.network")

LABEL = "io.litefleet"
HELPER_REPOSITORY = "litefleet/nethelper"
# Debian's iptables and what it depends on that the minbase base image lacks
HELPER_PACKAGES = (
    "iptables",
    "libip4tc2",
    "libip6tc2",
    "libxtables12",
    "libmnl0",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "libnftnl11",
    "netbase",
)
_HELPER_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY debs /tmp/debs
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
"""
# where a tenant's containers may never go, except the store's S3 port: private, shared (CGNAT), link-local
# (metadata services) and loopback ranges. Public destinations stay open (tenant code may call public APIs).
DEFAULT_BLOCKED = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8")


class IsolationFailed(RuntimeError):
    """The helper container could not install or remove a tenant's rules (its exit code and last output)."""

    code = "isolation_failed"


@dataclass(frozen=True)
class TenantNetwork:
    """The names one tenant's isolation uses on a node. Interface names are at most 15 characters, so the bridge is
    named from a hash; the fleet is part of it so two control planes sharing an engine never share a network."""

    fleet: str
    tenant: str

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.fleet}/{self.tenant}".encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        return f"lf-{self.tenant}-{self.key[:8]}"

    @property
    def bridge(self) -> str:
        return f"lft{self.key}"

    @property
    def input_chain(self) -> str:
        return f"LF-{self.key}-IN"

    @property
    def forward_chain(self) -> str:
        return f"LF-{self.key}-FWD"

    def labels(self) -> dict[str, str]:
        return {f"{LABEL}.managed-network": "true", f"{LABEL}.fleet": self.fleet, f"{LABEL}.tenant": self.tenant}


@dataclass(frozen=True)
class Isolation:
    """What a tenant's containers may reach besides public addresses: the store's S3 port, nothing else private.

    `s3_ips` are the addresses of the S3 endpoint as containers reach it (empty when it is a public name);
    `blocked` are the CIDRs dropped for everything else. Validated here, because they end up in a shell script."""

    s3_ips: tuple[str, ...]
    s3_port: int
    blocked: tuple[str, ...] = DEFAULT_BLOCKED

    def __post_init__(self) -> None:
        for ip in self.s3_ips:
            ipaddress.IPv4Address(ip)
        for cidr in self.blocked:
            ipaddress.IPv4Network(cidr, strict=False)
        if not 0 < self.s3_port < 65536:
            raise ValueError(f"S3 port {self.s3_port} is out of range")

    @classmethod
    def for_endpoint(cls, endpoint: str, blocked: tuple[str, ...] = DEFAULT_BLOCKED) -> Isolation:
        """The isolation for containers that use the S3 `endpoint` (http://HOST:PORT). A host name is resolved here
        (IPv4): the rules admit the addresses it has now."""
        parsed = urllib.parse.urlparse(endpoint)
        host = parsed.hostname or ""
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            ips: tuple[str, ...] = (str(ipaddress.IPv4Address(host)),)
        except ValueError:
            try:
                found = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                found = []
            ips = tuple(sorted({str(info[4][0]) for info in found}))
        return cls(ips, port, tuple(blocked))

    def to_label(self) -> str:
        return json.dumps({"s3_ips": list(self.s3_ips), "s3_port": self.s3_port, "blocked": list(self.blocked)})

    @classmethod
    def from_label(cls, raw: str) -> Isolation:
        data = json.loads(raw)
        return cls(tuple(data["s3_ips"]), int(data["s3_port"]), tuple(data["blocked"]))


def tenant_isolation(s3_endpoint: str, node_address: str) -> Isolation:
    """The isolation of tenants' containers on a node at `node_address` using the store at `s3_endpoint`: the
    default blocked ranges, plus the node's own address when it is a public one (its engine, its published ports)."""
    blocked: tuple[str, ...] = DEFAULT_BLOCKED
    try:
        address = ipaddress.IPv4Address(node_address)
    except ValueError:
        address = None
    if address is not None and not any(address in ipaddress.IPv4Network(cidr) for cidr in blocked):
        blocked = (*blocked, f"{address}/32")
    return Isolation.for_endpoint(s3_endpoint, blocked)


# -- the scripts the helper runs (pure text: unit tested) -----------------------------------------------------------

_PICK_BACKEND = """\
if iptables-nft -S DOCKER-USER >/dev/null 2>&1; then IPT=iptables-nft
elif iptables-legacy -S DOCKER-USER >/dev/null 2>&1; then IPT=iptables-legacy
else echo "no DOCKER-USER chain in either iptables backend: is this a Docker engine with iptables on?" >&2; exit 3
fi
"""


def install_script(network: TenantNetwork, isolation: Isolation) -> str:
    """Install (or rebuild) the tenant's two chains and their jump rules. Safe to repeat: `--noflush` restore
    declares the chains, which empties them when they exist, then fills them whole in one transaction; a jump rule
    is inserted only when `-C` does not find it."""
    inp, fwd, bridge = network.input_chain, network.forward_chain, network.bridge
    rules = ["*filter", f":{inp} - [0:0]", f":{fwd} - [0:0]"]
    rules.append(f"-A {inp} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
    rules += [f"-A {inp} -p tcp -d {ip}/32 --dport {isolation.s3_port} -j ACCEPT" for ip in isolation.s3_ips]
    rules.append(f"-A {inp} -j DROP")
    rules.append(f"-A {fwd} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN")
    rules += [f"-A {fwd} -p tcp -d {ip}/32 --dport {isolation.s3_port} -j RETURN" for ip in isolation.s3_ips]
    rules += [f"-A {fwd} -d {cidr} -j DROP" for cidr in isolation.blocked]
    rules.append("COMMIT")
    table = "\n".join(rules)
    return (
        "set -eu\n"
        + _PICK_BACKEND
        + f"$IPT-restore --noflush <<'RULES'\n{table}\nRULES\n"
        + f"$IPT -C INPUT -i {bridge} -j {inp} 2>/dev/null || $IPT -I INPUT 1 -i {bridge} -j {inp}\n"
        + f"$IPT -C DOCKER-USER -i {bridge} -j {fwd} 2>/dev/null || $IPT -I DOCKER-USER 1 -i {bridge} -j {fwd}\n"
        + "echo installed $IPT\n"
    )


def removal_script(network: TenantNetwork) -> str:
    """Remove the tenant's jump rules (by exact spec, every copy) and chains from both backends, but only when its
    bridge no longer exists: a network created again meanwhile keeps its rules. Safe to repeat: what is gone is
    skipped."""
    inp, fwd, bridge = network.input_chain, network.forward_chain, network.bridge
    lines = [
        f"if [ -e /sys/class/net/{bridge} ]; then echo kept: {bridge} exists; exit 0; fi",
        "for IPT in iptables-nft iptables-legacy; do",
        f"  while $IPT -D INPUT -i {bridge} -j {inp} 2>/dev/null; do :; done",
        f"  while $IPT -D DOCKER-USER -i {bridge} -j {fwd} 2>/dev/null; do :; done",
        f"  for CHAIN in {inp} {fwd}; do $IPT -F $CHAIN 2>/dev/null && $IPT -X $CHAIN 2>/dev/null || true; done",
        "done",
        "echo removed",
    ]
    return "\n".join(lines) + "\n"


# -- the helper image ------------------------------------------------------------------------------------------------


def helper_tag() -> str:
    digest = hashlib.sha256((_HELPER_DOCKERFILE + " ".join(HELPER_PACKAGES)).encode()).hexdigest()[:12]
    return f"{HELPER_REPOSITORY}:{digest}"


def build_helper_image(client: Any, base: str = DEFAULT_BASE) -> str:
    """Build the helper image on `client` (the local engine) if it is not there: the base image plus Debian's
    iptables, its .debs fetched by the host's apt (no registry). Returns its tag. Safe to re-run."""
    tag = helper_tag()
    try:
        client.images.get(tag)
        return tag
    except docker_errors.ImageNotFound:
        pass
    started = time.monotonic()
    ensure_base_image(client, base)
    if shutil.which("apt-get") is None:
        raise ImageError("apt-get is needed to fetch iptables for the network helper image")
    with tempfile.TemporaryDirectory() as context:
        debs = Path(context) / "debs"
        debs.mkdir()
        done = subprocess.run(
            ["apt-get", "download", *HELPER_PACKAGES], cwd=debs, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise ImageError(f"apt-get download for the network helper failed (run apt-get update?): {last}")
        (Path(context) / "Dockerfile").write_text(_HELPER_DOCKERFILE)
        try:
            client.images.build(path=context, tag=tag, buildargs={"BASE_IMAGE": base}, rm=True, forcerm=True)
        except docker_errors.BuildError as exc:
            raise ImageError(f"network helper image build failed: {exc.msg}") from None
    log.info("image.helper_built", image=tag, seconds=round(time.monotonic() - started, 1))
    return tag


def run_helper(client: Any, image: str, script: str, network: TenantNetwork, timeout: float = 60.0) -> str:
    """Run `script` as root in the node's network namespace with NET_ADMIN and NET_RAW only; returns its output.
    It runs as an exec in the node's one resident helper container (`_resident_helper`): an exec costs tens of
    milliseconds where a new container cost ~1.5 s on every agent start. Raises IsolationFailed when it fails."""
    helper = _resident_helper(client, image, network.fleet)
    try:
        code, output = helper.exec_run(["timeout", str(int(timeout)), "sh", "-c", script], user="0:0")
    except docker_errors.APIError as exc:  # the helper went away between the check and the exec
        raise IsolationFailed(f"network helper for tenant {network.tenant} failed: {exc.explanation}") from None
    text = output.decode(errors="replace").strip() if isinstance(output, bytes) else str(output)
    if code != 0:
        raise IsolationFailed(f"network helper for tenant {network.tenant} exited {code}: {text[-300:]!r}")
    return text


def _resident_helper(client: Any, image: str, fleet: str) -> Any:
    """The node's helper container for this fleet, running `image`: found, started, or (re)created. Safe to call
    concurrently: a create that loses the race (409) takes the winner's container. It holds NET_ADMIN/NET_RAW in
    the node's network namespace and nothing else (no other capability, no mount, read-only root); only the
    engine's API (mutual TLS) can exec in it, never a tenant."""
    name = f"lf-nethelper-{fleet}"
    for _ in range(3):
        try:
            helper = client.containers.get(name)
        except docker_errors.NotFound:
            helper = None
        if helper is not None and helper.labels.get(f"{LABEL}.helper_image") != image:
            with contextlib.suppress(docker_errors.NotFound):
                helper.remove(force=True)  # an older helper image: replace it
            helper = None
        if helper is None:
            try:
                helper = client.containers.run(
                    image,
                    ["sleep", "infinity"],
                    name=name,
                    detach=True,
                    network_mode="host",
                    user="0:0",
                    cap_drop=["ALL"],
                    cap_add=["NET_ADMIN", "NET_RAW"],
                    security_opt=["no-new-privileges"],
                    read_only=True,
                    tmpfs={"/run": "rw,size=1m", "/tmp": "rw,size=1m"},
                    mem_limit="32m",
                    pids_limit=32,
                    labels={f"{LABEL}.helper": "network", f"{LABEL}.helper_image": image, f"{LABEL}.fleet": fleet},
                )
            except docker_errors.APIError as exc:
                if exc.status_code == 409:  # created (or being removed) meanwhile: look again
                    time.sleep(0.2)
                    continue
                raise
        if helper.status != "running":
            with contextlib.suppress(docker_errors.APIError):
                helper.start()
            helper.reload()
        if helper.status == "running":
            return helper
    raise IsolationFailed(f"the network helper container {name} does not run")


# -- the verbs the driver uses ---------------------------------------------------------------------------------------


def ensure_tenant_network(client: Any, network: TenantNetwork, isolation: Isolation, helper: str) -> None:
    """Create the tenant's network if it is missing, then install its rules. Safe to repeat (and meant to be
    repeated before every start: a rebooted node has the network but lost its rules): an existing network is kept,
    the rules are rebuilt to the same content. Fails closed: when the rules cannot be installed it raises, and the
    caller starts nothing."""
    started = time.monotonic()
    create_tenant_network(client, network, isolation)
    install_tenant_rules(client, network, isolation, helper)
    log.info(
        "network.ensured", tenant=network.tenant, network=network.name, seconds=round(time.monotonic() - started, 3)
    )


def create_tenant_network(client: Any, network: TenantNetwork, isolation: Isolation) -> None:
    """`ensure_tenant_network`'s first half: the network, created when missing (no rules yet: nothing may run on it
    before `install_tenant_rules`). Safe to repeat."""
    existing = client.networks.list(names=[network.name])
    if not any(found.name == network.name for found in existing):
        try:
            client.networks.create(
                network.name,
                driver="bridge",
                options={
                    "com.docker.network.bridge.name": network.bridge,
                    "com.docker.network.bridge.enable_icc": "false",
                },
                labels={**network.labels(), f"{LABEL}.isolation": isolation.to_label()},  # for claimed pool containers
                check_duplicate=True,
            )
        except docker_errors.APIError as exc:
            if exc.status_code != 409:  # 409: created meanwhile by a concurrent start of the same tenant
                raise


def install_tenant_rules(client: Any, network: TenantNetwork, isolation: Isolation, helper: str) -> None:
    """`ensure_tenant_network`'s second half: the tenant's chains, rebuilt to the same content (safe to repeat).
    Raises IsolationFailed; the caller then runs nothing of the tenant's."""
    run_helper(client, helper, install_script(network, isolation), network)


def release_tenant_network(client: Any, network: TenantNetwork, helper: str) -> bool:
    """Remove the tenant's network and rules when none of its containers is left on the node; True when removed.
    Safe to repeat: a missing network is skipped; the network goes first (Docker refuses while a container uses
    it, and then the rules stay), and the removal script keeps rules whose bridge exists again."""
    labels = [f"{LABEL}.managed=true", f"{LABEL}.fleet={network.fleet}", f"{LABEL}.tenant={network.tenant}"]
    if client.containers.list(all=True, filters={"label": labels}):
        return False
    pooled = client.containers.list(
        all=True, filters={"label": [f"{LABEL}.pool=true", f"{LABEL}.fleet={network.fleet}"]}
    )
    if any((parse_incarnation_name(found.name) or ("",))[0] == network.tenant for found in pooled):
        return False  # a claimed pool container of the tenant: its identity is in its name, not its labels
    for found in client.networks.list(names=[network.name]):
        if found.name != network.name:
            continue
        try:
            found.remove()
        except docker_errors.NotFound:
            pass
        except docker_errors.APIError as exc:
            log.info("network.kept", tenant=network.tenant, network=network.name, reason=str(exc.explanation)[:200])
            return False
    run_helper(client, helper, removal_script(network), network)
    log.info("network.released", tenant=network.tenant, network=network.name)
    return True
