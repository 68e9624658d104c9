"""All control-plane configuration, from LITEFLEET_* environment variables (or a .env file)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LITEFLEET_", env_file=".env", extra="ignore")

    state_dir: Path = Path("var")
    store_ip: str = "127.0.0.1"
    store_s3_port: int = 8333
    store_master_port: int = 9333
    store_volume_port: int = 8080
    store_filer_port: int = 8888
    store_dir: Path | None = None  # the embedded store's directory (data, certificates); None: STATE_DIR/store
    bucket: str = "litefleet"
    s3_endpoint: str | None = None  # an external S3 (AWS, R2, MinIO); None: the embedded SeaweedFS
    s3_admin_key: str = "litefleet-admin"
    s3_admin_secret: SecretStr = SecretStr("")  # generated into state_dir on first `store up` when empty
    agent_s3_endpoint: str | None = None  # the store as containers reach it; None: http://STORE_IP:S3_PORT

    database_url: str | None = None  # None: sqlite:///STATE_DIR/fleet.db; postgresql+psycopg://... for several
    api_host: str = "127.0.0.1"
    api_port: int = 8700
    api_url: str | None = None  # where the CLI finds the control plane; None: http://API_HOST:API_PORT
    api_token: SecretStr | None = None  # admin bearer token; None: the token file (see `api_token`)
    api_token_file: Path | None = None  # None: STATE_DIR/api-token, written 0600 on the control plane's first start
    image: str = "litefleet/agent:latest"
    drain_timeout: float = 60.0  # how long a scale-down waits for in-flight workflows before stopping the agent
    stop_timeout: float = 30.0  # SIGTERM -> final sync -> exit, before SIGKILL
    ready_timeout: float = 180.0  # container start -> /readyz and the first replica (restores of big DBs count)
    workers: int = 4  # operations run in parallel (never two of one tenant)
    node_workers: int = 8  # fail-overs and drains of different nodes run at once, on threads of their own
    move_parallelism: int = 4  # agents an evacuation, drain or fail-over moves at once
    max_unavailable: int = 1  # a tenant's agents an evacuation or drain takes down at once (per-operation param too)
    # warm: the new generation first follows the old one's replica, and is promoted after the stop (downtime: the
    # tail); cold: stop, then restore in full and start. Per operation too (`strategy`); warm falls back to cold
    # by itself when its follower fails before the source stops.
    move_strategy: Literal["warm", "cold"] = "warm"
    warm_catchup_timeout: float = 120.0  # a follower must reach the source's replica txid in this, else cold
    warm_promote_timeout: float = 30.0  # a promoted follower applies the source's final transactions in this
    # warm pool (issue 14): identity-less agent containers each ready node keeps started; a new agent (provision,
    # scale-up of an ordinal without history) claims one instead of starting cold. Their memory counts in capacity.
    warm_pool_size: int = Field(default=0, ge=0, le=64)
    warm_pool_memory_mb: int = Field(
        default=256, ge=64
    )  # the limit a pool container idles with (a claim sets the tenant's)
    warm_pool_interval: float = Field(default=5.0, gt=0)  # seconds between refills
    warm_follow_interval: float = 0.1  # seconds between a follower's polls of the source's replica (S3 LISTs)
    # memory a follower gets on top of its tenant's limit until promoted: `litestream restore -f` holds ~240 MB of
    # anonymous memory following a 1 GB database (the agent's 256 MiB limit killed it); lowered once it exited
    warm_follower_memory_mb: int = Field(default=768, ge=0)
    preflight_timeout: float = 3.0  # each check before an operation stops anything (store, engines) answers in this
    rollback_timeout: float = 120.0  # how long a failed move keeps trying to start its old incarnation again
    stuck_after: float = 300.0  # an agent starting/stopping this long with no operation of its tenant is stuck
    stuck_interval: float = 15.0  # how often the reconciler looks for stuck agents
    fence_interval: float = 5.0  # how often an agent reads its CURRENT marker (LITEFLEET_FENCE_INTERVAL of each agent)
    # seconds an agent keeps acknowledging writes without a confirmed CURRENT (each agent's LITEFLEET_LEASE_TIMEOUT,
    # passed explicitly); a fail-over waits this long (+1 s) after moving CURRENT before the new generation starts
    agent_lease_timeout: float = 15.0
    agent_lease_margin: float = 1.0  # added to that wait, for the agents' clock rates
    lease_seconds: float = 6.0  # an operation's claim expires this long after its worker stops renewing it
    max_waits: int = 100  # `?wait=` requests waiting at once per control plane; past it: 429 too_many_waits
    wait_poll_interval: float = 0.2  # seconds between the one poll of every awaited operation's state
    # workflow requests the router holds while their agent is moved (services/holds.py), and for how long each;
    # past either: 503 agent_moving with Retry-After
    max_held_requests: int = 200
    hold_timeout: float = 15.0
    hold_poll_interval: float = 0.1  # seconds between the one read of the agents of every tenant with held requests
    heartbeat_interval: float = 5.0
    node_grace_heartbeats: int = 3  # missed heartbeats before a node is marked down (one miss is not death)
    heartbeat_timeout: float = 3.0  # an unanswered ping is missed (down: max(interval, this) x grace + this)
    health_parallelism: int = 64  # nodes pinged / agents probed at once by the health monitor
    observer: bool = True  # keep read-only copies of agents' databases (history, lookups of stopped agents)
    observer_max_followers: int = 32  # live `litestream restore -f` processes; agents beyond are restored periodically
    observer_follow_interval: float = 1.0  # seconds between a follower's polls of its replica (S3 LISTs)
    observer_periodic_interval: float = 30.0  # seconds between full restores of followed agents beyond the cap
    observer_sync_interval: float = 5.0  # seconds between matching the followed agents to the fleet DB
    # one Docker network per tenant on each node, with firewall rules that leave its containers only the store's S3
    # port and public addresses (control_plane/drivers/network.py); off only for engines where that cannot work
    tenant_networks: bool = True
    # replication measured against the store (control_plane/observer/lag.py): seconds without a confirmed sync
    # before an agent is `lagging`, then `stalled` (a healthy agent's is about its probe interval + heartbeat_interval)
    replication_lagging_after: float = 20.0
    replication_stalled_after: float = 45.0
    lag_sample_interval: float = 2.0  # seconds between reads of the running agents' replica positions (one LIST each)
    pki_dir: Path | None = None  # engines' CA and client credential sets (control_plane/pki.py); None: STATE_DIR/pki

    @property
    def embedded_store_dir(self) -> Path:
        return self.store_dir or self.state_dir / "store"

    @property
    def engine_pki_dir(self) -> Path:
        return self.pki_dir or self.state_dir / "pki"

    @property
    def fleet_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'fleet.db').resolve()}"

    @property
    def observer_cache_dir(self) -> Path:
        return self.state_dir / "observer"

    @property
    def client_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def store_endpoint(self) -> str:
        return self.s3_endpoint or f"http://{self.store_ip}:{self.store_s3_port}"

    @property
    def containers_s3_endpoint(self) -> str:
        return self.agent_s3_endpoint or self.store_endpoint


MIN_TOKEN_LENGTH = 24


class TokenRefused(ValueError):
    code = "api_token_refused"


def token_file(settings: Settings) -> Path:
    return settings.api_token_file or settings.state_dir / "api-token"


def api_token(settings: Settings, *, create: bool) -> str | None:
    """The admin API token: LITEFLEET_API_TOKEN when set, else the token file. With `create` (the control plane
    starting) a missing file is written with a new random token, mode 0600, so the API is never open; the CLI reads
    the same file. An empty or short token is refused (TokenRefused) rather than accepted as a weak one."""
    if settings.api_token is not None:
        token = settings.api_token.get_secret_value()
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenRefused(f"LITEFLEET_API_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
        return token
    path = token_file(settings)
    if not path.exists() and not create:
        return None
    token = secret_in(path)
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenRefused(f"the API token in {path} must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def secret_in(path: Path) -> str:
    """The secret kept in `path`, written there first (a random token, created 0600: never readable by others, not
    even briefly) when the file does not exist yet. Safe to call again: an existing file is only read."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process made it first: read theirs
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def admin_secret(settings: Settings) -> str:
    """The admin secret: from the environment, else generated once and kept in the store's directory (0600)."""
    if settings.s3_admin_secret.get_secret_value():
        return settings.s3_admin_secret.get_secret_value()
    return secret_in(settings.embedded_store_dir / "admin-secret")
