"""Object storage for tenants (boto3; any S3: SeaweedFS, MinIO, R2, AWS S3).

Layout under the bucket:  {root}/tenants/{tenant}/agents/{ordinal}/CURRENT            the generation allowed to run
                          {root}/tenants/{tenant}/agents/{ordinal}/gen-{g}/...        Litestream's replica of gen g
                          {root}/tenants/{tenant}/agents/{ordinal}/gen-{g}/shutdown.json  how gen g stopped
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from agent_image.container import litestream


class CurrentMoved(Exception):
    """The CURRENT marker changed since it was read: someone else advanced the generation."""

    code = "current_moved"


@dataclass(frozen=True)
class Current:
    generation: int
    etag: str


class ObjectStorage:
    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        root: str = "fleet",
        region: str = "us-east-1",
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self.bucket = bucket
        self._credentials = (access_key, secret_key)
        self.root = root.strip("/")
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def s3(self) -> Any:
        """The boto3 client, made on first use: importing boto3 costs ~0.5 s that serving the API does not need
        (made under a lock: boto3's default session is not safe to use from two threads at once)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    access_key, secret_key = self._credentials
                    self._client = boto3.client(
                        "s3",
                        endpoint_url=self.endpoint,
                        aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key,
                        region_name=self.region,
                        config=Config(
                            s3={"addressing_style": "path"},
                            retries={"max_attempts": 3},
                            connect_timeout=3,
                            read_timeout=10,
                        ),
                    )
        return self._client

    @property
    def credentials(self) -> tuple[str, str]:
        """The (access key, secret key) this client signs with: for child processes (litestream) that must
        reach the same store as the same identity."""
        return self._credentials

    # -- names ------------------------------------------------------------------------------------------------------

    def tenant_prefix(self, tenant: str) -> str:
        return f"{self.root}/tenants/{tenant}/"

    def agent_prefix(self, tenant: str, agent: int) -> str:
        return f"{self.tenant_prefix(tenant)}agents/{agent}/"

    def replica_prefix(self, tenant: str, agent: int, generation: int) -> str:
        return f"{self.agent_prefix(tenant, agent)}gen-{generation}/"

    def replica_url(self, tenant: str, agent: int, generation: int) -> str:
        return f"s3://{self.bucket}/{self.replica_prefix(tenant, agent, generation)}"

    # -- CURRENT markers ------------------------------------------------------------------------------------------

    def read_current(self, tenant: str, agent: int) -> Current | None:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.agent_prefix(tenant, agent) + "CURRENT")
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return Current(int(obj["Body"].read().decode().strip()), obj["ETag"])

    def advance_current(self, tenant: str, agent: int, generation: int, expected: Current | None) -> Current:
        """Write CURRENT=generation only if CURRENT is still `expected` (None: only if it does not exist yet).

        Re-running with the same arguments after a success raises CurrentMoved: read CURRENT again and compare
        its generation with the one you wanted."""
        conditions = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected.etag}
        try:
            result = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.agent_prefix(tenant, agent) + "CURRENT",
                Body=str(generation).encode(),
                **conditions,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise CurrentMoved(f"CURRENT of {tenant}/{agent} moved since it was read") from None
            raise
        return Current(generation, result["ETag"])

    def read_shutdown(self, tenant: str, agent: int, generation: int) -> dict[str, Any] | None:
        """The record generation `generation` wrote when it stopped (None: it has not stopped cleanly)."""
        key = self.replica_prefix(tenant, agent, generation) + "shutdown.json"
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        record: dict[str, Any] = json.loads(body)
        return record

    # -- replicas -------------------------------------------------------------------------------------------------

    def objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under `prefix` (ListObjectsV2 entries: Key, LastModified, Size, ...), page by page."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", ())

    def keys(self, prefix: str) -> list[str]:
        return [entry["Key"] for entry in self.objects(prefix)]

    def replica_position(self, tenant: str, agent: int, generation: int) -> tuple[int, float | None]:
        """The newest transaction id in a generation's replica (0 when empty), from Litestream's LTX file names
        (`<level>/<min txid>-<max txid>.ltx`, hex), and when the lowest-level file holding it was written: the
        time of the last sync that brought new data (compactions rewrite it later at higher levels)."""
        best: tuple[int, int, float | None] = (0, 0, None)  # txid, -level, written
        prefix = self.replica_prefix(tenant, agent, generation)
        for entry in self.objects(prefix):
            level, _, name = entry["Key"][len(prefix) :].rpartition("/")
            if not (name.endswith(".ltx") and "-" in name and level.isdigit()):
                continue
            candidate = (int(name[:-4].split("-")[1], 16), -int(level), entry["LastModified"].timestamp())
            if candidate[:2] > best[:2]:
                best = candidate
        return best[0], best[2]

    def replica_txid(self, tenant: str, agent: int, generation: int) -> int:
        return self.replica_position(tenant, agent, generation)[0]

    def generations(self, tenant: str, agent: int) -> list[int]:
        prefix = self.agent_prefix(tenant, agent)
        found = {key[len(prefix) :].split("/")[0] for key in self.keys(prefix)}
        return sorted(int(name[4:]) for name in found if name.startswith("gen-"))

    def purge_tenant(self, tenant: str) -> int:
        """Delete every object of the tenant. Safe to re-run: a second run finds nothing to delete."""
        keys = self.keys(self.tenant_prefix(tenant))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def purge_generation(self, tenant: str, agent: int, generation: int) -> int:
        """Delete one generation's replica (a successor a rolled-back move abandoned before it served: a later
        attempt reuses its number and must not restore it). Safe to re-run: a second run finds nothing."""
        keys = self.keys(self.replica_prefix(tenant, agent, generation))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def restore(self, replica_url: str, output: Path, *, integrity_check: str = "full") -> Path:
        """Restore a replica into a local file for inspection or verification (never over an existing file)."""
        if output.exists():
            raise FileExistsError(f"{output} exists; restore never overwrites")
        with tempfile.TemporaryDirectory() as scratch:
            document = litestream.config(output, replica_url, self.endpoint, self.region)
            config = litestream.write_config(document, Path(scratch) / "restore.json")
            found = litestream.restore(
                config, output, if_replica_exists=True, integrity_check=integrity_check, credentials=self._credentials
            )
        if not found:
            raise FileNotFoundError(f"no replica at {replica_url}")
        return output

    def ensure_bucket(self) -> None:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.s3.create_bucket(Bucket=self.bucket)
