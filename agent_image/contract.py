"""The container environment contract, defined once: every variable an agent container is started with.

The control plane writes it (`ContainerEnv.to_env()`, for `docker run -e`); the agent reads it back
(`ContainerEnv.read(env)`, through `identity.AgentIdentity.from_env`). The image sets the last group itself
(Dockerfile `ENV`), tests and local runs may override them. A value that does not parse is an `IdentityError`
naming the variable: the container stops in one line (exit 2) before it touches the database or the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Set by the control plane for each incarnation.
TENANT = "LITEFLEET_TENANT"
AGENT = "LITEFLEET_AGENT"  # the ordinal
GENERATION = "LITEFLEET_GENERATION"
BUNDLE = "LITEFLEET_BUNDLE"
REPLICA_URL = "LITEFLEET_REPLICA_URL"  # s3://bucket/<agent prefix>/gen-<generation>
RESTORE_FROM_URL = "LITEFLEET_RESTORE_FROM_URL"  # optional: an older generation of the same agent
S3_ENDPOINT = "LITEFLEET_S3_ENDPOINT"
S3_REGION = "LITEFLEET_S3_REGION"
SYNC_INTERVAL = "LITEFLEET_SYNC_INTERVAL"
MONITOR_INTERVAL = "LITEFLEET_MONITOR_INTERVAL"
FENCE_INTERVAL = "LITEFLEET_FENCE_INTERVAL"
ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"

# Set by the image (or a local run).
DATA_DIR = "LITEFLEET_DATA_DIR"
RUN_DIR = "LITEFLEET_RUN_DIR"
AGENT_HOST = "LITEFLEET_AGENT_HOST"
AGENT_PORT = "LITEFLEET_AGENT_PORT"
RESTORE_INTEGRITY = "LITEFLEET_RESTORE_INTEGRITY"
SYNCHRONOUS = "LITEFLEET_SYNCHRONOUS"
LOG_LEVEL = "LITEFLEET_LOG_LEVEL"


class IdentityError(ValueError):
    code = "bad_identity"


class EnvReader:
    """Reads variables of the contract from one environment; a missing or malformed one raises IdentityError."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str:
        value = self.env.get(name, "").strip()
        if not value:
            raise IdentityError(f"{name} is not set")
        return value

    def optional(self, name: str, default: str) -> str:
        return self.env.get(name, default)

    def number(self, name: str, default: str, minimum: float = 0.001) -> float:
        raw = self.env.get(name, default)
        try:
            value = float(raw)
        except ValueError:
            raise IdentityError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise IdentityError(f"{name} must be at least {minimum}, got {raw!r}")
        return value

    def whole(self, name: str, default: str | None = None, minimum: int = 0) -> int:
        raw = self.env.get(name, default) if default is not None else self.text(name)
        if raw is None or not raw.isdigit() or int(raw) < minimum:
            raise IdentityError(f"{name} must be a whole number >= {minimum}, got {raw!r}")
        return int(raw)


@dataclass(frozen=True)
class ContainerEnv:
    """What the control plane tells one incarnation (the variables of the first group above)."""

    tenant: str
    agent: int
    generation: int
    bundle: str
    replica_url: str
    restore_from_url: str | None
    s3_endpoint: str
    s3_region: str
    access_key: str
    secret_key: str = field(repr=False)
    sync_interval: float = 1.0
    monitor_interval: float = 1.0
    fence_interval: float = 5.0

    def to_env(self) -> dict[str, str]:
        """The container's environment (RESTORE_FROM_URL only when there is one)."""
        env = {
            TENANT: self.tenant,
            AGENT: str(self.agent),
            GENERATION: str(self.generation),
            BUNDLE: self.bundle,
            REPLICA_URL: self.replica_url,
            S3_ENDPOINT: self.s3_endpoint,
            S3_REGION: self.s3_region,
            SYNC_INTERVAL: str(self.sync_interval),
            MONITOR_INTERVAL: str(self.monitor_interval),
            FENCE_INTERVAL: str(self.fence_interval),
            ACCESS_KEY: self.access_key,
            SECRET_KEY: self.secret_key,
        }
        if self.restore_from_url:
            env[RESTORE_FROM_URL] = self.restore_from_url
        return env

    @staticmethod
    def read(env: Mapping[str, str]) -> dict[str, Any]:
        """The fields of a ContainerEnv parsed from `env` (a dict, so a subclass can add its own)."""
        reader = EnvReader(env)
        values: dict[str, Any] = {
            "tenant": reader.text(TENANT),
            "agent": reader.whole(AGENT),
            "generation": reader.whole(GENERATION, minimum=1),
            "bundle": reader.text(BUNDLE),
            "replica_url": reader.text(REPLICA_URL).rstrip("/"),
            "restore_from_url": (env.get(RESTORE_FROM_URL) or "").rstrip("/") or None,
            "s3_endpoint": reader.text(S3_ENDPOINT),
            "s3_region": reader.optional(S3_REGION, "us-east-1"),
            "access_key": reader.text(ACCESS_KEY),
            "secret_key": reader.text(SECRET_KEY),
            "sync_interval": reader.number(SYNC_INTERVAL, "1"),
            "monitor_interval": reader.number(MONITOR_INTERVAL, "1"),
            "fence_interval": reader.number(FENCE_INTERVAL, "5"),
        }
        return values


# How a container that refuses to start exits (before Litestream takes over; after, 0 means a proven final sync).
EXIT_BAD_IDENTITY = 2
EXIT_STALE_GENERATION = 3
EXIT_STORE_UNREACHABLE = 4
EXIT_RESTORE_FAILED = 5


class StartRefused(Exception):
    """The container will not start: a stable `code` for its one-line message and its `exit_code`."""

    def __init__(self, code: str, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code
