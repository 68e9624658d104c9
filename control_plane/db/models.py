"""The fleet database: one ladder of models per resource (Base -> Create/Update/Public -> table row).

The API returns `*Public` models only; credentials and lock tokens live on the rows and never leave them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from enum import Enum, StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, StringConstraints, computed_field, model_validator
from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
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
    pool_size: int = 0  # warm pool containers this node keeps (LITEFLEET_WARM_POOL_SIZE when last refilled)
    pool_ready: int = 0  # of which were running and unclaimed at the last refill


class Node(NodeBase, table=True):
    name: str = Field(primary_key=True, max_length=40)
    state: NodeState = NodeState.ready
    last_seen_at: float | None = None
    missed_heartbeats: int = 0
    created_at: float = Field(default_factory=_now)
    # the OCI runtimes its engine offers (`docker info`), read at registration and refreshed by heartbeats
    runtimes: list[str] = Field(default_factory=lambda: [DEFAULT_RUNTIME.value], sa_column=Column(JSON))
    # the warm pool (reconciler/pool.py): what the last refill saw, and its lease on this node's pool
    pool_size: int = 0
    pool_ready: int = 0
    pool_memory_mb: int = 0  # each pool container's memory limit: size x this is taken from capacity_memory_mb
    pool_lock_token: str | None = Field(default=None, max_length=64)
    pool_locked_until: float | None = None


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
    # the default of its agents' `?durability=` (validated by TenantCreate)
    durability: str = Field(default="local", max_length=10)


class TenantCreate(TenantBase):
    name: Name
    agents: int = Field(default=1, ge=0, le=64)
    runtime: Runtime = Field(default=DEFAULT_RUNTIME, description="OCI runtime: runc, or runsc (gVisor)")
    durability: Literal["local", "replicated"] = Field(
        default="local",
        description="the default of its agents' `?durability=`: `local` answers a start after the local commit, "
        "`replicated` only once the replica in object storage holds it (RPO 0 for those calls)",
    )


class TenantPublic(TenantBase):
    name: str
    agents: int
    runtime: str = DEFAULT_RUNTIME.value
    state: TenantState
    created_at: float
    placements: list[AgentPublic] = []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def replication(self) -> ReplicationState:
        """The worst replication state of the tenant's running agents (ok when none runs)."""
        return worst_replication(a.replication for a in self.placements if a.state == AgentState.running)


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


class MoveStrategy(StrEnum):
    warm = "warm"  # the new generation follows the old one's replica first; promoted after the proven stop
    cold = "cold"  # stop with a proven final sync, then restore in full and start


class EvacuateRequest(SQLModel):
    to_node: str | None = Field(default=None, description="target node; default: placement picks")
    from_node: str | None = Field(default=None, description="only agents on this node; default: all")
    max_unavailable: int | None = Field(
        default=None, ge=1, le=64, description="agents of the tenant moved (down) at once; default: the setting (1)"
    )
    strategy: MoveStrategy | None = Field(
        default=None, description="warm (follower, then promotion) or cold (stop, restore, start); default: setting"
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


class ReplicationState(StrEnum):
    """Replication measured against the store (see `AgentLag`), worst last."""

    ok = "ok"
    unknown = "unknown"  # not running, or nothing measured yet
    lagging = "lagging"
    stalled = "stalled"


REPLICATION_ORDER = (ReplicationState.ok, ReplicationState.unknown, ReplicationState.lagging, ReplicationState.stalled)


def worst_replication(states: Iterable[ReplicationState | None]) -> ReplicationState:
    """The worst of `states` (ok < unknown < lagging < stalled); ok when there are none."""
    found = [state or ReplicationState.unknown for state in states]
    return max(found, key=REPLICATION_ORDER.index, default=ReplicationState.ok)


class AgentHealth(SQLModel):
    """The agent's own view of its replication, from its last `/readyz` probe by the health monitor. Its
    `replica_txid` and `lag_txids` are what the agent believes (they stay put while the store is frozen); the API
    shows the store-side measurement (`AgentLag`) instead."""

    probed_at: float | None = None
    ready: bool | None = None
    local_txid: int | None = Field(default=None, sa_type=BigInteger)
    replica_txid: int | None = Field(default=None, sa_type=BigInteger)
    lag_txids: int | None = Field(default=None, sa_type=BigInteger)
    seconds_since_sync: float | None = None
    # the runtime's own count of commits no sync has confirmed: unlike the txids, it grows while the store is frozen
    unconfirmed_commits: int | None = Field(default=None, sa_type=BigInteger)


class AgentLag(SQLModel):
    """Replication measured against the store by the lag sampler (control_plane/observer/lag.py): the replica's
    newest txid as listed in object storage, and `synced_at`, the newest moment known to be covered by it (every
    write the agent acknowledged before it is in the replica). Written only by the sampler."""

    store_txid: int | None = Field(default=None, sa_type=BigInteger)
    store_checked_at: float | None = None  # the last successful read of the replica's position
    synced_at: float | None = None
    replication: str | None = Field(default=None, max_length=10)  # a ReplicationState value
    replication_note: str | None = Field(default=None, max_length=300)
    lag_sampled_at: float | None = None


class AgentPublic(BaseModel):
    """An agent as the API shows it. Replication is the store-side measurement: `replica_txid` is the replica's
    newest txid in object storage, `local_txid` the last one the agent reported committing, `lag_txids` the
    difference, `lag_seconds` how long ago `synced_at` was (writes acknowledged after it may not be in the
    replica), `replication` ok / lagging / stalled / unknown. `seconds_since_sync` and `unconfirmed_commits`
    (transactions the agent committed that no sync has confirmed in the replica, at its last probe) are the agent's
    own view."""

    tenant: str
    ordinal: int
    generation: int
    node: str | None
    state: AgentState
    url: str | None
    updated_at: float
    probed_at: float | None = None
    ready: bool | None = None
    local_txid: int | None = None
    replica_txid: int | None = None
    lag_txids: int | None = None
    lag_seconds: float | None = None
    synced_at: float | None = None
    replica_checked_at: float | None = None
    replication: ReplicationState = ReplicationState.unknown
    replication_note: str | None = None
    seconds_since_sync: float | None = None
    unconfirmed_commits: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_agent(cls, data: Any) -> Any:
        if isinstance(data, Agent):
            return agent_as_shown({name: getattr(data, name) for name in AGENT_PUBLIC_COLUMNS})
        return data

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> AgentPublic:
        """From an agent's columns read without the ORM (a tenant page's 400 agents: ORM objects cost ~3x)."""
        return cls.model_validate(agent_as_shown(columns))


def plain(value: Any) -> Any:
    """An enum member's value (anything else as it is)."""
    return value.value if isinstance(value, Enum) else value


def agent_as_shown(agent: Mapping[str, Any]) -> dict[str, Any]:
    """What the API shows of an agent's columns: the replication figures measured against the store, and only a
    running agent's replication state. In `AgentPublic`'s field order and JSON-ready: a list page serializes these
    dicts as they are (services/tenants.py `tenant_rows`), byte for byte what `AgentPublic` would
    (tests/unit/control_plane/test_list_rows.py)."""
    running = agent["state"] == AgentState.running
    local, store, synced_at = agent["local_txid"], agent["store_txid"], agent["synced_at"]
    # enums as their values (what the JSON holds; serializing enum members costs ~3x as much as str)
    return {
        "tenant": agent["tenant"],
        "ordinal": agent["ordinal"],
        "generation": agent["generation"],
        "node": agent["node"],
        "state": plain(agent["state"]),
        "url": agent["url"],
        "updated_at": agent["updated_at"],
        "probed_at": agent["probed_at"],
        "ready": agent["ready"],
        "local_txid": local,
        "replica_txid": store,
        "lag_txids": None if local is None or store is None else max(0, local - store),
        "lag_seconds": None if synced_at is None else round(max(0.0, time.time() - synced_at), 3),
        "synced_at": synced_at,
        "replica_checked_at": agent["store_checked_at"],
        "replication": ReplicationState(agent["replication"] or "unknown").value if running else "unknown",
        "replication_note": agent["replication_note"] if running else None,
        "seconds_since_sync": agent["seconds_since_sync"],
        "unconfirmed_commits": agent["unconfirmed_commits"] if running else None,
    }


_AGENT_AS_IS = (
    "tenant", "ordinal", "generation", "node", "state", "url", "updated_at", "probed_at", "ready", "synced_at",
    "seconds_since_sync",
)  # fmt: skip
AGENT_PUBLIC_COLUMNS = (  # what `AgentPublic` is made of: a list reads only these (never the tokens)
    *_AGENT_AS_IS, "local_txid", "store_txid", "store_checked_at", "replication", "replication_note",
    "unconfirmed_commits",
)  # fmt: skip


class Agent(AgentHealth, AgentLag, table=True):
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
    # The node an unfinished operation (`reserved_by`) planned this agent's next incarnation on, recorded in the
    # plan's own transaction: placement counts it until the agent is placed there (then its row counts) and the
    # operation's end clears it, so two operations planning at once never both take a node's last place.
    reserved_node: str | None = Field(default=None, index=True, max_length=40)
    reserved_by: str | None = Field(default=None, index=True, max_length=40)
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


FINISHED_STATES = (OperationState.succeeded, OperationState.failed)
UNFINISHED_STATES = (OperationState.pending, OperationState.running)


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
    # lists sort newest first (created_at, id), alone or within one tenant; the claim scans unfinished ones by age
    __table_args__ = (
        Index("ix_operation_created_at_id", "created_at", "id"),
        Index("ix_operation_tenant_created_at", "tenant", "created_at"),
        Index("ix_operation_state_created_at", "state", "created_at"),
    )
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
    __table_args__ = (Index("ix_event_node_id", "node", "id"),)  # a node's events, newest first
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(default_factory=_now, index=True)
    kind: str = Field(max_length=60)
    tenant: str | None = Field(default=None, index=True, max_length=40)
    node: str | None = Field(default=None, max_length=40)
    agent: int | None = None
    operation: str | None = Field(default=None, max_length=16)
    message: str = ""


# -- API tokens of tenants -------------------------------------------------------------------------------------------


class ApiTokenCreate(SQLModel):
    name: str = Field(default="", max_length=60, description="a label for people (what the token is for)")


class ApiTokenPublic(SQLModel):
    id: str = Field(description="the token's public id: its first part, shown in listings and used to revoke it")
    tenant: str
    name: str
    created_at: float
    revoked_at: float | None = None


class ApiTokenCreated(ApiTokenPublic):
    token: str = Field(description="the secret: shown once, here; the control plane keeps only its SHA-256")


class ApiToken(SQLModel, table=True):
    """A tenant's API token. Only the SHA-256 of the secret is kept: the fleet DB (or a backup of it) does not
    give anyone a working token."""

    __tablename__ = "api_token"
    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(index=True, max_length=40)
    name: str = Field(default="", max_length=60)
    secret_sha256: str = Field(max_length=64, repr=False)
    created_at: float = Field(default_factory=_now)
    revoked_at: float | None = None


# -- pages of a list -------------------------------------------------------------------------------------------------

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a list route: `items` in the route's order, and `next_cursor` (opaque) to pass back as
    `?cursor=` for the next page; null on the last page."""

    items: list[Item]
    next_cursor: str | None = None


TenantPublic.model_rebuild()
