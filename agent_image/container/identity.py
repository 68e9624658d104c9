"""Who this agent container is, read once from its environment (and its secrets file) and checked before anything
runs.

The control plane sets these variables; a container that gets them wrong stops in one line (exit 2), before it
touches the database or the object store. The secrets (S3 keys, tokens) are not in the environment: they are read
from `secrets_path` (`wait_for_secrets` in the entrypoint, `with_secrets` afterwards)."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_image import contract
from agent_image.container.s3 import S3Client, split_url
from agent_image.contract import AgentSecrets, ContainerEnv, IdentityError

__all__ = ["INTEGRITY_MODES", "NAME", "AgentIdentity", "IdentityError"]

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
INTEGRITY_MODES = ("none", "quick", "full")


@dataclass(frozen=True)
class AgentIdentity(ContainerEnv):
    """What the control plane told this incarnation (`ContainerEnv`), plus what the image sets."""

    data_dir: Path = Path("/data")
    run_dir: Path = Path("/tmp/litefleet")
    port: int = 8080
    integrity_check: str = "quick"
    synchronous: str = "FULL"
    secrets_path: Path = Path(contract.DEFAULT_SECRETS_FILE)
    secrets_timeout: float = 60.0
    secrets: AgentSecrets | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentIdentity:
        env = os.environ if env is None else env
        reader = contract.EnvReader(env)
        identity = cls(
            **ContainerEnv.read(env),
            data_dir=Path(reader.optional(contract.DATA_DIR, "/data")),
            run_dir=Path(reader.optional(contract.RUN_DIR, "/tmp/litefleet")),
            port=reader.whole(contract.AGENT_PORT, "8080", minimum=1),
            integrity_check=reader.optional(contract.RESTORE_INTEGRITY, "quick"),
            synchronous=reader.optional(contract.SYNCHRONOUS, "FULL"),
            secrets_path=Path(reader.optional(contract.SECRETS_FILE, contract.DEFAULT_SECRETS_FILE)),
            secrets_timeout=reader.number(contract.SECRETS_TIMEOUT, "60"),
        )
        identity.check()
        return identity

    def with_secrets(self, secrets: AgentSecrets | None = None) -> AgentIdentity:
        """This identity with its secrets (read from `secrets_path` now when not given)."""
        return dataclasses.replace(self, secrets=secrets or AgentSecrets.read(self.secrets_path))

    def wait_for_secrets(
        self,
        *,
        poll: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> AgentIdentity:
        """Wait (up to `secrets_timeout`) for the control plane to deliver the secrets file, then read it.
        Raises IdentityError when it never arrives or does not parse."""
        deadline = clock() + self.secrets_timeout
        while not self.secrets_path.exists():
            if clock() >= deadline:
                raise IdentityError(
                    f"no secrets at {self.secrets_path} after {self.secrets_timeout:g}s (the control plane "
                    "delivers them with `docker exec ... python -m agent_image.container.secrets_in`)"
                )
            sleep(poll)
        identity = self.with_secrets()
        from agent_image._phases import mark  # structlog: not for the other users of this module

        mark("secrets_read")
        return identity

    @property
    def tokens(self) -> tuple[str, str]:
        """(agent token, admin token)."""
        secrets = self._secrets()
        return secrets.agent_token, secrets.admin_token

    def _secrets(self) -> AgentSecrets:
        if self.secrets is None:
            raise IdentityError(f"the secrets of this identity were not read yet ({self.secrets_path})")
        return self.secrets

    def check(self) -> None:
        if not NAME.match(self.tenant):
            raise IdentityError(f"tenant {self.tenant!r} is not a valid name (a-z, 0-9, '-', up to 63)")
        if self.effective_lease_timeout <= self.fence_interval:
            raise IdentityError(
                f"{contract.LEASE_TIMEOUT} ({self.effective_lease_timeout:g}s) must be longer than "
                f"{contract.FENCE_INTERVAL} ({self.fence_interval:g}s), or the lease lapses between two checks"
            )
        if self.integrity_check not in INTEGRITY_MODES:
            raise IdentityError(f"{contract.RESTORE_INTEGRITY} must be one of {INTEGRITY_MODES}")
        bucket, key = split_url(self.replica_url)
        expected_tail = f"/agents/{self.agent}/gen-{self.generation}"
        if not key.endswith(expected_tail) or f"/tenants/{self.tenant}/" not in key:
            raise IdentityError(
                f"{contract.REPLICA_URL} must end with tenants/{self.tenant}{expected_tail}, got {self.replica_url}"
            )
        if self.restore_from_url is None:
            return
        from_bucket, from_key = split_url(self.restore_from_url)
        older = re.fullmatch(re.escape(self.agent_prefix) + r"/gen-(\d+)", from_key)
        if from_bucket != bucket or older is None or int(older.group(1)) >= self.generation:
            raise IdentityError(
                f"{contract.RESTORE_FROM_URL} must be an older generation of this same agent "
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

    @property
    def credentials(self) -> tuple[str, str]:
        """The S3 key pair (access key, secret key)."""
        secrets = self._secrets()
        return secrets.access_key, secrets.secret_key

    def s3(self) -> S3Client:
        return S3Client(self.s3_endpoint, *self.credentials, self.s3_region)
