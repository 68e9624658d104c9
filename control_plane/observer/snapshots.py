"""Snapshots: on-demand restores of any generation at any time (`-timestamp`) or transaction (`-txid`), cached
under `root/snapshots` (least recently used removed first)."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.observer.models import (
    CopyKind,
    Freshness,
    NoStateAt,
    ReplicaNotFound,
    Source,
    as_utc,
    copy_key,
    make_ref,
    utc,
)
from control_plane.observer.processes import Litestream, remove_copy
from control_plane.observer.queries import schema_version


@dataclass
class Snapshot:
    path: Path
    source: Source
    used: float


class Snapshots:
    def __init__(self, litestream: Litestream, lock: threading.RLock) -> None:
        self.runner = litestream
        self.storage = litestream.storage
        self.settings = litestream.settings
        self.root = litestream.root
        self.lock = lock
        self._snapshots: dict[tuple[Any, ...], Snapshot] = {}
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}

    def get(
        self, tenant: str, agent: int, *, at: dt.datetime | None, txid: int | None, generation: int | None
    ) -> Snapshot:
        """See `Observer.snapshot`."""
        if at is not None and txid is not None:
            raise ValueError("give at or txid, not both")
        at = None if at is None else as_utc(at)
        ref = make_ref(tenant, agent, generation if generation is not None else self.pick_generation(tenant, agent, at))
        replica_txid, written = self.storage.replica_position(ref.tenant, ref.agent, ref.generation)
        if replica_txid == 0:
            raise ReplicaNotFound(f"no replica for {ref}")
        point: tuple[Any, ...] = ("at", at.isoformat()) if at else ("txid", txid) if txid else ("latest", replica_txid)
        cache_key = (ref, *point)
        with self.lock:
            entry_lock = self._locks.setdefault(cache_key, threading.Lock())
        with entry_lock:
            with self.lock:
                cached = self._snapshots.get(cache_key)
                if cached is not None and cached.path.exists():
                    cached.used = time.time()
                    return cached
            digest = hashlib.sha1(repr(point).encode()).hexdigest()[:12]
            path = self.root / "snapshots" / f"{copy_key(ref)}-{digest}.db"
            restored = self.runner.restore(ref, path, at=at, txid=txid)
            freshness = Freshness(
                txid=restored,
                applied_at=utc(time.time()),
                as_of=at,
                replica_txid=replica_txid,
                replica_written_at=utc(written) if written else None,
                seconds_behind=0.0 if (at is None and txid is None and restored >= replica_txid) else None,
                checked_at=utc(time.time()),
            )
            snap = Snapshot(path, Source(ref, CopyKind.snapshot, freshness, schema_version(path)), time.time())
            with self.lock:
                self._snapshots[cache_key] = snap
                self._trim()
            return snap

    def pick_generation(self, tenant: str, agent: int, at: dt.datetime | None) -> int:
        if at is None:
            current = self.storage.read_current(tenant, agent)
            if current is not None:
                return current.generation
        starts: dict[int, float] = {}
        prefix = self.storage.agent_prefix(tenant, agent)
        for entry in self.storage.objects(prefix):
            name = entry["Key"][len(prefix) :]
            if name.startswith("gen-") and name.endswith(".ltx"):
                gen = int(name[4:].split("/")[0])
                stamp = entry["LastModified"].timestamp()
                starts[gen] = min(stamp, starts.get(gen, stamp))
        if not starts:
            raise ReplicaNotFound(f"no replica for {tenant}/{agent}")
        if at is None:
            return max(starts)
        began = [gen for gen, stamp in starts.items() if stamp <= at.timestamp()]
        if not began:
            raise NoStateAt(f"{tenant}/{agent} has no replica from before {at.isoformat()}")
        return max(began)

    def _trim(self) -> None:
        excess = len(self._snapshots) - self.settings.snapshot_cache
        if excess <= 0:
            return
        for key, snap in sorted(self._snapshots.items(), key=lambda item: item[1].used)[:excess]:
            del self._snapshots[key]
            remove_copy(snap.path)

    # -- queries --------------------------------------------------------------------------------------------------
