"""One tenant agent incarnation as a Docker container: its identity, limits, labels, volume and port.

The container gets exactly what `agent_image.container.identity` reads and nothing else: credentials scoped to its
tenant, no capabilities, a read-only root, its own named volume for the database."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from control_plane.storage import TenantCredentials

AGENT_PORT = 8080
LABEL = "io.litefleet"


def incarnation_name(tenant: str, agent: int, generation: int) -> str:
    """The container (and volume) name of one incarnation: `lf-<tenant>-<agent>-g<generation>`."""
    return f"lf-{tenant}-{agent}-g{generation}"


@dataclass(frozen=True)
class AgentSpec:
    tenant: str
    agent: int
    generation: int
    bundle: str
    image: str
    replica_url: str
    s3_endpoint: str  # as the container reaches it (the engine's bridge gateway, not 127.0.0.1)
    credentials: TenantCredentials = field(repr=False)
    restore_from_url: str | None = None
    s3_region: str = "us-east-1"
    sync_interval: float = 1.0
    monitor_interval: float = 1.0
    fence_interval: float = 5.0
    memory_mb: int = 256
    cpus: float = 1.0
    pids: int = 256
    publish_ip: str = "127.0.0.1"
    network: str | None = None
    fleet: str = "litefleet"  # which control plane owns it (its bucket): another fleet's containers are not ours

    @property
    def name(self) -> str:
        return incarnation_name(self.tenant, self.agent, self.generation)

    @property
    def volume(self) -> str:
        return self.name

    def environment(self) -> dict[str, str]:
        env = {
            "LITEFLEET_TENANT": self.tenant,
            "LITEFLEET_AGENT": str(self.agent),
            "LITEFLEET_GENERATION": str(self.generation),
            "LITEFLEET_BUNDLE": self.bundle,
            "LITEFLEET_REPLICA_URL": self.replica_url,
            "LITEFLEET_S3_ENDPOINT": self.s3_endpoint,
            "LITEFLEET_S3_REGION": self.s3_region,
            "LITEFLEET_SYNC_INTERVAL": str(self.sync_interval),
            "LITEFLEET_MONITOR_INTERVAL": str(self.monitor_interval),
            "LITEFLEET_FENCE_INTERVAL": str(self.fence_interval),
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
        }
        if self.restore_from_url:
            env["LITEFLEET_RESTORE_FROM_URL"] = self.restore_from_url
        return env

    def labels(self) -> dict[str, str]:
        return {
            f"{LABEL}.managed": "true",
            f"{LABEL}.fleet": self.fleet,
            f"{LABEL}.tenant": self.tenant,
            f"{LABEL}.agent": str(self.agent),
            f"{LABEL}.generation": str(self.generation),
        }


def run_agent(client: Any, spec: AgentSpec) -> Any:
    """Create and start the incarnation's container (never pulling). Not idempotent by itself: callers look for
    an existing container by name or labels first (`find_agent`)."""
    client.images.get(spec.image)  # raises ImageNotFound here instead of letting the SDK try a registry
    return client.containers.run(
        spec.image,
        name=spec.name,
        detach=True,
        environment=spec.environment(),
        labels=spec.labels(),
        volumes={spec.volume: {"bind": "/data", "mode": "rw"}},
        ports={f"{AGENT_PORT}/tcp": (spec.publish_ip, None)},
        mem_limit=f"{spec.memory_mb}m",
        nano_cpus=int(spec.cpus * 1e9),
        pids_limit=spec.pids,
        read_only=True,
        tmpfs={"/tmp": "rw,size=16m,mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
        extra_hosts={"host.docker.internal": "host-gateway"},
        network=spec.network,
    )


def find_agent(client: Any, spec: AgentSpec) -> Any | None:
    found = client.containers.list(all=True, filters={"name": f"^{spec.name}$"})
    return found[0] if found else None


def agent_url(container: Any) -> str:
    """The agent's HTTP address as published on the node."""
    container.reload()
    binding = container.attrs["NetworkSettings"]["Ports"][f"{AGENT_PORT}/tcp"][0]
    return f"http://{binding['HostIp']}:{binding['HostPort']}"


class AgentNotReady(RuntimeError):
    code = "agent_not_ready"


def wait_ready(container: Any, timeout: float = 30.0) -> str:
    """Poll the agent's `/readyz` until it answers 200; fail early (with its last log lines) if it exits."""
    url = agent_url(container)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        container.reload()
        if container.status == "exited":
            raise AgentNotReady(f"{container.name} exited: {_last_lines(container)}")
        time.sleep(0.02)
    raise AgentNotReady(f"{container.name} not ready after {timeout:.0f}s: {_last_lines(container)}")


def _last_lines(container: Any, n: int = 3) -> str:
    return " | ".join(container.logs(tail=n).decode(errors="replace").strip().splitlines())
