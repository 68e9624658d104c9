"""All control-plane configuration, from LITEFLEET_* environment variables (or a .env file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LITEFLEET_", env_file=".env", extra="ignore")

    state_dir: Path = Path("var")
    store_ip: str = "127.0.0.1"
    store_s3_port: int = 8333
    store_master_port: int = 9333
    store_volume_port: int = 8080
    store_filer_port: int = 8888
    bucket: str = "litefleet"
    s3_endpoint: str | None = None  # an external S3 (AWS, R2, MinIO); None: the embedded SeaweedFS
    s3_admin_key: str = "litefleet-admin"
    s3_admin_secret: SecretStr = SecretStr("")  # generated into state_dir on first `store up` when empty
    agent_s3_endpoint: str | None = None  # the store as containers reach it; None: http://STORE_IP:S3_PORT

    database_url: str | None = None  # None: sqlite:///STATE_DIR/fleet.db; postgresql+psycopg://... for several
    api_host: str = "127.0.0.1"
    api_port: int = 8700
    api_url: str | None = None  # where the CLI finds the control plane; None: http://API_HOST:API_PORT
    api_token: SecretStr | None = None  # bearer token for /v1; required when API_HOST is not a loopback address
    image: str = "litefleet/agent:latest"
    drain_timeout: float = 60.0  # how long a scale-down waits for in-flight workflows before stopping the agent
    stop_timeout: float = 30.0  # SIGTERM -> final sync -> exit, before SIGKILL
    ready_timeout: float = 180.0  # container start -> /readyz and the first replica (restores of big DBs count)
    workers: int = 4  # operations run in parallel (never two of one tenant)
    move_parallelism: int = 4  # agents an evacuation, drain or fail-over moves at once
    lease_seconds: float = 6.0  # an operation's claim expires this long after its worker stops renewing it
    heartbeat_interval: float = 5.0
    node_grace_heartbeats: int = 3  # missed heartbeats before a node is marked down (one miss is not death)
    observer: bool = True  # keep read-only copies of agents' databases (history, lookups of stopped agents)
    observer_max_followers: int = 32  # live `litestream restore -f` processes; agents beyond are restored periodically
    observer_follow_interval: float = 1.0  # seconds between a follower's polls of its replica (S3 LISTs)
    observer_periodic_interval: float = 30.0  # seconds between full restores of followed agents beyond the cap
    observer_sync_interval: float = 5.0  # seconds between matching the followed agents to the fleet DB

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


def admin_secret(settings: Settings) -> str:
    """The admin secret: from the environment, else generated once and kept in state_dir (mode 0600)."""
    if settings.s3_admin_secret.get_secret_value():
        return settings.s3_admin_secret.get_secret_value()
    path = settings.state_dir / "store" / "admin-secret"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()
