"""The fleet database: one ladder of models per resource (Base -> Create/Update/Public -> table row).

The API returns `*Public` models only; credentials and lock tokens live on the rows and never leave them."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated, Any

from pydantic import StringConstraints
from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
# A DNS label of up to 40: names become container, volume and S3 path parts.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=40)]


def _now() -> float:
    return time.time()


# -- runtimes -------------------------------------------------------------------------------------------------------


class Runtime(StrEnum):
    """The OCI runtimes a tenant may ask for (what each needs: control_plane/drivers/runtimes.py)."""

    runc = "runc"
    runsc = "runsc"  # gVisor


DEFAULT_RUNTIME = Runtime.runc


# -- nodes ----------------------------------------------------------------------------------------------------------


class NodeState(StrEnum):
    ready = "ready"
    cordoned = "cordoned"  # keeps what runs there, takes nothing new
    draining = "draining"  # a drain operation is moving everything off
    down = "down"  # the engine stopped answering past the grace period


# where agents' ports are published: an IPv4/IPv6 address or a host name, nothing else (no scheme, port or path)
_LABEL = r"[0-9A-Za-z]([0-9A-Za-z-]{0,61}[0-9A-Za-z])?"
HOST_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$|^[0-9a-fA-F:]{{2,39}}$"
Host = Annotated[str, StringConstraints(pattern=HOST_PATTERN, max_length=100)]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$", max_length=63)]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{0,63}$", max_length=63)]
MAX_LABELS = 32


class NodeBase(SQLModel):
    name: str = Field(max_length=40)
    engine_url: str = Field(max_length=300, description="unix:///var/run/docker.sock, tcp://h:2376 (TLS), ssh://h")
    address: str = Field(
        default="127.0.0.1",
        max_length=100,
        description="where agents' ports are published, as the control plane sees it",
    )
    capacity_agents: int = Field(default=20, ge=1, le=1000)
    capacity_memory_mb: int = Field(default=8192, ge=64, le=4_194_304)  # up to 4 TiB: bounded, never a DB overflow
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    tls: str | None = Field(default=None, max_length=40, description="tcp:// engines: client credential set name")
    insecure: bool = Field(default=False, description="plain tcp:// to a non-loopback engine (root for anyone)")


class NodeCreate(NodeBase):
    name: Name
    address: Host = "127.0.0.1"
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    tls: Name | None = None  # PKI_DIR/clients/<tls>/{ca,cert,key}.pem (control_plane/pki.py)


class NodePublic(NodeBase):
    state: NodeState
    runtimes: list[str] = []
    agents: int = 0
    memory_mb_used: int = 0
    last_seen_at: float | None = None
    created_at: float


class Node(NodeBase, table=True):
    name: str = Field(primary_key=True, max_length=40)
    state: NodeState = NodeState.ready
    last_seen_at: float | None = None
    missed_heartbeats: int = 0
    created_at: float = Field(default_factory=_now)
    # the OCI runtimes its engine offers (`docker info`), read at registration and refreshed by heartbeats
    runtimes: list[str] = Field(default_factory=lambda: [DEFAULT_RUNTIME.value], sa_column=Column(JSON))


# -- tenants --------------------------------------------------------------------------------------------------------


class TenantState(StrEnum):
    active = "active"
    hibernated = "hibernated"
    deleting = "deleting"


class TenantBase(SQLModel):
    bundle: str = Field(default="tenants.hello", max_length=200)
    memory_mb: int = Field(default=256, ge=64, le=16384)
    cpus: float = Field(default=0.5, gt=0, le=16)
    sync_interval: float = Field(default=1.0, ge=0.05, le=3600, description="Litestream sync and monitor interval (s)")


class TenantCreate(TenantBase):
    name: Name
    agents: int = Field(default=1, ge=0, le=64)
    runtime: Runtime = Field(default=DEFAULT_RUNTIME, description="OCI runtime: runc, or runsc (gVisor)")


class TenantPublic(TenantBase):
    name: str
    agents: int
    runtime: str = DEFAULT_RUNTIME.value
    state: TenantState
    created_at: float
    placements: list[AgentPublic] = []


class Tenant(TenantBase, table=True):
    name: str = Field(primary_key=True, max_length=40)
    agents: int = 0  # desired agent count
    wake_agents: int = 0  # the count to come back to after hibernation
    state: TenantState = TenantState.active
    created_at: float = Field(default_factory=_now)
    # validated by TenantCreate; a string here, so that allowing another runtime is a code change, not a migration
    runtime: str = Field(default=DEFAULT_RUNTIME.value, max_length=20)
    # the tenant's token for its agents' /admin/* (drain), minted by the fleet at the first start; never fleet-wide
    # (tenant code can read it from its own container), never in an API answer (TenantPublic has no such field)
    admin_token: str | None = Field(default=None, max_length=200, repr=False)


class ScaleRequest(SQLModel):
    agents: int = Field(ge=0, le=64)


class EvacuateRequest(SQLModel):
    to_node: str | None = Field(default=None, description="target node; default: placement picks")
    from_node: str | None = Field(default=None, description="only agents on this node; default: all")
    max_unavailable: int | None = Field(
        default=None, ge=1, le=64, description="agents of the tenant moved (down) at once; default: the setting (1)"
    )


# -- agents (tenant x ordinal) and their incarnations ---------------------------------------------------------------


class AgentState(StrEnum):
    starting = "starting"
    running = "running"
    stopping = "stopping"
    retained = "retained"  # stopped with a proven final sync; its replica is kept for a later scale-up or wake
    lost = "lost"  # its node died; restarts from the last replicated state
    failed = "failed"


# An agent in one of these states holds (or is about to hold) a place on its node.
PLACED_STATES = (AgentState.running, AgentState.starting, AgentState.stopping)


class AgentHealth(SQLModel):
    """The agent's own view of its replication, from its last `/readyz` probe by the health monitor."""

    probed_at: float | None = None
    ready: bool | None = None
    local_txid: int | None = Field(default=None, sa_type=BigInteger)
    replica_txid: int | None = Field(default=None, sa_type=BigInteger)
    lag_txids: int | None = Field(default=None, sa_type=BigInteger)
    seconds_since_sync: float | None = None


class AgentPublic(AgentHealth):
    tenant: str
    ordinal: int
    generation: int
    node: str | None
    state: AgentState
    url: str | None
    updated_at: float


class Agent(AgentHealth, table=True):
    __table_args__ = (UniqueConstraint("tenant", "ordinal"),)
    id: str = Field(primary_key=True, max_length=60)  # "{tenant}/{ordinal}"
    tenant: str = Field(index=True, max_length=40)
    ordinal: int
    generation: int = 0  # the incarnation that is (or last was) CURRENT; 0: never started
    node: str | None = Field(default=None, index=True, max_length=40)
    state: AgentState = AgentState.starting
    url: str | None = None
    access_key: str | None = None  # the incarnation's scoped key id
    # The incarnation's secrets, kept to deliver them again after each start of its container (its tmpfs is empty
    # then). Only on the table model: AgentPublic has none of them, and nothing logs them.
    secret_key: str | None = Field(default=None, max_length=200, repr=False)
    agent_token: str | None = Field(default=None, max_length=200, repr=False)
    admin_token: str | None = Field(default=None, max_length=200, repr=False)
    updated_at: float = Field(default_factory=_now)


# -- operations and events ------------------------------------------------------------------------------------------


class OperationKind(StrEnum):
    provision = "provision"
    scale = "scale"
    evacuate = "evacuate"
    hibernate = "hibernate"
    wake = "wake"
    delete = "delete"
    drain = "drain"
    failover = "failover"  # a node went down: its agents restart elsewhere from their last replica
    cleanup = "cleanup"  # remove a tenant's stale containers from a node (queued by the health monitor)


class OperationState(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class OperationPublic(SQLModel):
    id: str
    kind: OperationKind
    tenant: str | None
    node: str | None
    state: OperationState
    params: dict[str, Any]
    steps: list[dict[str, Any]]
    result: dict[str, Any]
    error: str | None
    attempts: int
    created_at: float
    updated_at: float
    finished_at: float | None


class Operation(SQLModel, table=True):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16], primary_key=True)
    kind: OperationKind
    tenant: str | None = Field(default=None, index=True, max_length=40)
    node: str | None = Field(default=None, max_length=40)
    state: OperationState = Field(default=OperationState.pending, index=True)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    error: str | None = None
    attempts: int = 0
    lock_token: str | None = None
    locked_until: float | None = None
    created_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)
    finished_at: float | None = None


class EventPublic(SQLModel):
    id: int
    at: float
    kind: str
    tenant: str | None
    node: str | None
    agent: int | None
    operation: str | None
    message: str


class Event(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=_now, index=True)
    kind: str = Field(max_length=60)
    tenant: str | None = Field(default=None, index=True, max_length=40)
    node: str | None = Field(default=None, max_length=40)
    agent: int | None = None
    operation: str | None = Field(default=None, max_length=16)
    message: str = ""


TenantPublic.model_rebuild()
