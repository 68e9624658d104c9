"""Who this agent container is, read once from its environment and checked before anything runs.

The control plane sets these variables; a container that gets them wrong stops in one line (exit 2), before it
touches the database or the object store."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_image.s3 import S3Client, split_url

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
INTEGRITY_MODES = ("none", "quick", "full")


class IdentityError(ValueError):
    code = "bad_identity"


@dataclass(frozen=True)
class AgentIdentity:
    tenant: str
    agent: int
    generation: int
    bundle: str
    replica_url: str  # s3://bucket/<agent prefix>/gen-<generation>
    restore_from_url: str | None  # the same agent's replica of an older generation, when there is one
    s3_endpoint: str
    s3_region: str
    access_key: str
    secret_key: str = field(repr=False)
    data_dir: Path = Path("/data")
    run_dir: Path = Path("/tmp/litefleet")
    port: int = 8080
    sync_interval: float = 1.0
    monitor_interval: float = 1.0
    fence_interval: float = 5.0
    integrity_check: str = "quick"
    synchronous: str = "FULL"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentIdentity:
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise IdentityError(f"{name} is not set")
            return value

        def number(name: str, default: str, minimum: float = 0.001) -> float:
            raw = env.get(name, default)
            try:
                value = float(raw)
            except ValueError:
                raise IdentityError(f"{name}={raw!r} is not a number") from None
            if value < minimum:
                raise IdentityError(f"{name} must be at least {minimum}, got {raw!r}")
            return value

        def whole(name: str, default: str | None = None, minimum: int = 0) -> int:
            raw = env.get(name, default) if default is not None else need(name)
            if raw is None or not raw.isdigit() or int(raw) < minimum:
                raise IdentityError(f"{name} must be a whole number >= {minimum}, got {raw!r}")
            return int(raw)

        identity = cls(
            tenant=need("LITEFLEET_TENANT"),
            agent=whole("LITEFLEET_AGENT"),
            generation=whole("LITEFLEET_GENERATION", minimum=1),
            bundle=need("LITEFLEET_BUNDLE"),
            replica_url=need("LITEFLEET_REPLICA_URL").rstrip("/"),
            restore_from_url=(env.get("LITEFLEET_RESTORE_FROM_URL") or "").rstrip("/") or None,
            s3_endpoint=need("LITEFLEET_S3_ENDPOINT"),
            s3_region=env.get("LITEFLEET_S3_REGION", "us-east-1"),
            access_key=need("AWS_ACCESS_KEY_ID"),
            secret_key=need("AWS_SECRET_ACCESS_KEY"),
            data_dir=Path(env.get("LITEFLEET_DATA_DIR", "/data")),
            run_dir=Path(env.get("LITEFLEET_RUN_DIR", "/tmp/litefleet")),
            port=whole("LITEFLEET_AGENT_PORT", "8080", minimum=1),
            sync_interval=number("LITEFLEET_SYNC_INTERVAL", "1"),
            monitor_interval=number("LITEFLEET_MONITOR_INTERVAL", "1"),
            fence_interval=number("LITEFLEET_FENCE_INTERVAL", "5"),
            integrity_check=env.get("LITEFLEET_RESTORE_INTEGRITY", "quick"),
            synchronous=env.get("LITEFLEET_SYNCHRONOUS", "FULL"),
        )
        identity.check()
        return identity

    def check(self) -> None:
        if not NAME.match(self.tenant):
            raise IdentityError(f"tenant {self.tenant!r} is not a valid name (a-z, 0-9, '-', up to 63)")
        if self.integrity_check not in INTEGRITY_MODES:
            raise IdentityError(f"LITEFLEET_RESTORE_INTEGRITY must be one of {INTEGRITY_MODES}")
        bucket, key = split_url(self.replica_url)
        expected_tail = f"/agents/{self.agent}/gen-{self.generation}"
        if not key.endswith(expected_tail) or f"/tenants/{self.tenant}/" not in key:
            raise IdentityError(
                f"LITEFLEET_REPLICA_URL must end with tenants/{self.tenant}{expected_tail}, got {self.replica_url}"
            )
        if self.restore_from_url is None:
            return
        from_bucket, from_key = split_url(self.restore_from_url)
        older = re.fullmatch(re.escape(self.agent_prefix) + r"/gen-(\d+)", from_key)
        if from_bucket != bucket or older is None or int(older.group(1)) >= self.generation:
            raise IdentityError(
                "LITEFLEET_RESTORE_FROM_URL must be an older generation of this same agent "
                f"(s3://{bucket}/{self.agent_prefix}/gen-N with N < {self.generation}), got {self.restore_from_url}"
            )

    @property
    def bucket(self) -> str:
        return split_url(self.replica_url)[0]

    @property
    def agent_prefix(self) -> str:
        """`<root>/tenants/<t>/agents/<n>`: CURRENT and every generation's replica live under it."""
        return split_url(self.replica_url)[1].rsplit("/", 1)[0]

    @property
    def current_key(self) -> str:
        return f"{self.agent_prefix}/CURRENT"

    @property
    def shutdown_key(self) -> str:
        """Where this incarnation writes how it stopped (read by the control plane after a stop)."""
        return f"{split_url(self.replica_url)[1]}/shutdown.json"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agent.db"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "litestream.sock"

    def s3(self) -> S3Client:
        return S3Client(self.s3_endpoint, self.access_key, self.secret_key, self.s3_region)
