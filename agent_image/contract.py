"""The container contract, defined once: every variable an agent container is started with, and its secrets file.

The control plane writes the environment (`ContainerEnv.to_env()`, for `docker run -e`); the agent reads it back
(`ContainerEnv.read(env)`, through `identity.AgentIdentity.from_env`). The image sets the second group itself
(Dockerfile `ENV`), tests and local runs may override them. A value that does not parse is an `IdentityError`
naming the variable: the container stops in one line (exit 2) before it touches the database or the store.

The environment holds no secret (`docker inspect` shows it). Secrets (the S3 key pair, the agent token, the admin
token) arrive as ONE JSON file, `AgentSecrets`, at `SECRETS_FILE` on a tmpfs, written after the container started
by `python -m agent_image.container.secrets_in` run through `docker exec` with the JSON on stdin. The entrypoint
waits up to `SECRETS_TIMEOUT` seconds for it. See agent_image/SECURITY-NOTES.md for the whole delivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
LEASE_TIMEOUT = "LITEFLEET_LEASE_TIMEOUT"  # optional: seconds without a confirmed CURRENT before writes get 503
DURABILITY = "LITEFLEET_DURABILITY"  # optional: "local" (default) or "replicated", per-agent default of ?durability=
DURABILITY_TIMEOUT = "LITEFLEET_DURABILITY_TIMEOUT"  # optional: seconds a replicated acknowledgement waits
FOLLOW = "LITEFLEET_FOLLOW"  # optional: "1" starts the incarnation as a follower of RESTORE_FROM_URL (warm moves)
FOLLOW_INTERVAL = "LITEFLEET_FOLLOW_INTERVAL"  # optional: seconds between a follower's polls of the replica
SERVING_MEMORY_MB = "LITEFLEET_SERVING_MEMORY_MB"  # optional: a follower's memory limit once promoted (see below)
POOLED = "LITEFLEET_POOLED"  # "1": a warm pool's container, no identity until claimed (agent_image/container/pool.py)

# Set by the image (or a local run).
DATA_DIR = "LITEFLEET_DATA_DIR"
RUN_DIR = "LITEFLEET_RUN_DIR"
AGENT_HOST = "LITEFLEET_AGENT_HOST"
AGENT_PORT = "LITEFLEET_AGENT_PORT"
RESTORE_INTEGRITY = "LITEFLEET_RESTORE_INTEGRITY"
SYNCHRONOUS = "LITEFLEET_SYNCHRONOUS"
LOG_LEVEL = "LITEFLEET_LOG_LEVEL"
SECRETS_FILE = "LITEFLEET_SECRETS_FILE"  # where AgentSecrets is read (image: /run/litefleet/secrets/identity.json)
SECRETS_TIMEOUT = "LITEFLEET_SECRETS_TIMEOUT"  # seconds the entrypoint waits for it (default 60)

DEFAULT_SECRETS_FILE = "/run/litefleet/secrets/identity.json"
DURABILITY_MODES = ("local", "replicated")
MIN_TOKEN_LENGTH = 16
MAX_SECRETS_BYTES = 16 * 1024


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

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.env.get(name, default).strip() or default
        if value not in choices:
            raise IdentityError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
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
    sync_interval: float = 1.0
    monitor_interval: float = 1.0
    fence_interval: float = 5.0
    lease_timeout: float | None = None  # None: 3 x fence_interval
    durability: str = "local"
    durability_timeout: float = 10.0
    follow: bool = False  # a follower: restores and follows RESTORE_FROM_URL, writes nothing until promoted
    follow_interval: float = 0.25
    # a follower with a memory allowance (`restore -f` grows): the limit it serves under. The control plane lowers
    # the container's limit once the promotion returns; no tenant code runs before the cgroup shows it
    serving_memory_mb: int | None = None

    @property
    def effective_lease_timeout(self) -> float:
        return self.lease_timeout if self.lease_timeout is not None else 3 * self.fence_interval

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
            DURABILITY: self.durability,
            DURABILITY_TIMEOUT: str(self.durability_timeout),
        }
        if self.restore_from_url:
            env[RESTORE_FROM_URL] = self.restore_from_url
        if self.lease_timeout is not None:
            env[LEASE_TIMEOUT] = str(self.lease_timeout)
        if self.follow:
            env[FOLLOW], env[FOLLOW_INTERVAL] = "1", str(self.follow_interval)
        if self.serving_memory_mb is not None:
            env[SERVING_MEMORY_MB] = str(self.serving_memory_mb)
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
            "sync_interval": reader.number(SYNC_INTERVAL, "1"),
            "monitor_interval": reader.number(MONITOR_INTERVAL, "1"),
            "fence_interval": reader.number(FENCE_INTERVAL, "5"),
            "lease_timeout": reader.number(LEASE_TIMEOUT, "0") if env.get(LEASE_TIMEOUT) else None,
            "durability": reader.choice(DURABILITY, "local", DURABILITY_MODES),
            "durability_timeout": reader.number(DURABILITY_TIMEOUT, "10"),
            "follow": reader.choice(FOLLOW, "0", ("0", "1")) == "1",
            "follow_interval": reader.number(FOLLOW_INTERVAL, "0.25"),
            "serving_memory_mb": reader.whole(SERVING_MEMORY_MB, minimum=1) if env.get(SERVING_MEMORY_MB) else None,
        }
        if values["follow"] and values["restore_from_url"] is None:
            raise IdentityError(f"{FOLLOW}=1 needs {RESTORE_FROM_URL}: a follower follows an older generation")
        for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LITEFLEET_AGENT_TOKEN", "LITEFLEET_ADMIN_TOKEN"):
            if env.get(secret):  # the old contract: refuse, so nobody keeps shipping secrets in `docker inspect`
                raise IdentityError(f"{secret} must not be in the environment: secrets come in {SECRETS_FILE}")
        return values


# How a container that refuses to start exits (before Litestream takes over; after, 0 means a proven final sync).
EXIT_BAD_IDENTITY = 2
EXIT_STALE_GENERATION = 3
EXIT_STORE_UNREACHABLE = 4
EXIT_RESTORE_FAILED = 5
EXIT_NO_SECRETS = 6  # the secrets file never arrived within SECRETS_TIMEOUT, or does not parse
EXIT_STOPPED_BEFORE_SERVING = 7  # SIGTERM before the agent server took over: no final sync to prove
EXIT_REPLICA_CORRUPT = 8  # a follower's copy, rebuilt from its source's replica, fails its integrity check


class StartRefused(Exception):
    """The container will not start: a stable `code` for its one-line message and its `exit_code`."""

    def __init__(self, code: str, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code


@dataclass(frozen=True)
class AgentSecrets:
    """The one secrets file of an incarnation (JSON at SECRETS_FILE, mode 0400, on a tmpfs):

    {"version": 1, "agent_token": "...", "admin_token": "...", "access_key": "...", "secret_key": "..."}

    `agent_token`: minted per incarnation, the router's key to /v1/*, /readyz, /metrics. `admin_token`: the
    control plane's, the only key to /admin/*. Tokens are at least MIN_TOKEN_LENGTH characters of
    printable ASCII without spaces. `access_key`/`secret_key`: the S3 key pair scoped to this agent's prefix (may be
    empty only for a standalone `litefleet-agent serve`, which needs no store)."""

    agent_token: str = field(repr=False)
    admin_token: str = field(repr=False)
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "agent_token": self.agent_token,
                "admin_token": self.admin_token,
                "access_key": self.access_key,
                "secret_key": self.secret_key,
            }
        )

    @classmethod
    def parse(cls, raw: str | bytes, *, need_s3: bool = True) -> AgentSecrets:
        """Validate a secrets document. The message of an IdentityError names the field, never its value."""
        if len(raw) > MAX_SECRETS_BYTES:
            raise IdentityError(f"the secrets document is larger than {MAX_SECRETS_BYTES} bytes")
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise IdentityError("the secrets document is not JSON") from None
        if not isinstance(document, dict):
            raise IdentityError("the secrets document must be a JSON object")
        unknown = set(document) - {"version", "agent_token", "admin_token", "access_key", "secret_key"}
        if unknown:
            raise IdentityError(f"the secrets document has unknown fields: {', '.join(sorted(unknown))}")
        if document.get("version", 1) != 1:
            raise IdentityError("the secrets document must have version 1")
        values: dict[str, str] = {}
        for name in ("agent_token", "admin_token", "access_key", "secret_key"):
            value = document.get(name, "")
            if not isinstance(value, str):
                raise IdentityError(f"secrets field {name} must be a string")
            values[name] = value
        for name in ("agent_token", "admin_token"):
            token = values[name]
            if len(token) < MIN_TOKEN_LENGTH or not all(33 <= ord(c) <= 126 for c in token):
                raise IdentityError(
                    f"secrets field {name} must be at least {MIN_TOKEN_LENGTH} printable ASCII characters, no spaces"
                )
        if values["agent_token"] == values["admin_token"]:
            raise IdentityError("secrets fields agent_token and admin_token must differ")
        if need_s3 and not (values["access_key"] and values["secret_key"]):
            raise IdentityError("secrets fields access_key and secret_key are required")
        return cls(values["agent_token"], values["admin_token"], values["access_key"], values["secret_key"])

    @classmethod
    def read(cls, path: str | Path, *, need_s3: bool = True) -> AgentSecrets:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read the secrets file {path}: {exc.strerror}") from None
        return cls.parse(raw, need_s3=need_s3)


PROMOTION_FILE = "promote.json"  # in RUN_DIR: written by `follower promote` (docker exec), read by the follower
PROMOTED_MARK = ".promoted"  # in DATA_DIR: the volume's database is this generation's own (no longer a copy)


@dataclass(frozen=True)
class Promotion:
    """The control plane's order to a follower (one JSON line through `docker exec ... follower promote`):
    `{"version": 1, "txid": N, "timeout": S}`: the source stopped with its final sync proven at transaction
    `txid` (and CURRENT names this generation); apply up to it within `timeout` seconds, then become the agent."""

    txid: int
    timeout: float = 30.0
    version: int = 1
    nonce: str = ""  # echoed in the follower's answers on stdout (the attach): other output there is not an answer

    def to_json(self) -> str:
        document: dict[str, object] = {"version": self.version, "txid": self.txid, "timeout": self.timeout}
        if self.nonce:
            document["nonce"] = self.nonce
        return json.dumps(document)

    @classmethod
    def parse(cls, raw: str | bytes) -> Promotion:
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            raise IdentityError("the promotion is not JSON") from None
        if not isinstance(document, dict) or document.get("version", 1) != 1:
            raise IdentityError("the promotion must be a JSON object of version 1")
        txid, timeout = document.get("txid"), document.get("timeout", 30.0)
        if not isinstance(txid, int) or isinstance(txid, bool) or txid < 0:
            raise IdentityError("promotion field txid must be a whole number >= 0")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise IdentityError("promotion field timeout must be a positive number of seconds")
        nonce = document.get("nonce", "")
        if not isinstance(nonce, str) or len(nonce) > 64 or (nonce and not nonce.isalnum()):
            raise IdentityError("promotion field nonce must be up to 64 letters and digits")
        return cls(txid, float(timeout), nonce=nonce)
