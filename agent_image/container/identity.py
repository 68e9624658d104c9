"""Who this agent container is, read once from its environment and checked before anything runs.

The control plane sets these variables; a container that gets them wrong stops in one line (exit 2), before it
touches the database or the object store."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_image import contract
from agent_image.container.s3 import S3Client, split_url
from agent_image.contract import ContainerEnv, IdentityError

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
        )
        identity.check()
        return identity

    def check(self) -> None:
        if not NAME.match(self.tenant):
            raise IdentityError(f"tenant {self.tenant!r} is not a valid name (a-z, 0-9, '-', up to 63)")
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

    def s3(self) -> S3Client:
        return S3Client(self.s3_endpoint, self.access_key, self.secret_key, self.s3_region)
