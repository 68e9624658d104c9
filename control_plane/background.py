"""What a control plane runs beside its API: the reconciler, the node health monitor, the warm pool's refill, the lag
sampler, the observer and its fleet sync.

`Background.start()` returns at once and a thread of its own brings them up, so the API answers from its first
moment: the slow steps (the bucket check, which loads boto3; the observer's read key, a `weed shell` session or
two, ~1.2 s) no longer stand between a restarted control plane and its first answer. Until the observer is up,
routes that read from it answer as a control plane without one would. What only the background work uses (the
reconciler, the observer's working parts) is imported by that thread too, not before the API serves."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog
from starlette.datastructures import State

from control_plane.fleet.incarnations import Fleet
from control_plane.observer import ObserverSettings
from control_plane.settings import Settings
from control_plane.storage.credentials import SeaweedCredentials
from control_plane.storage.replicas import ObjectStorage
from control_plane.timing import Periodic

if TYPE_CHECKING:
    from control_plane.observer import LagSampler, Observer

log = structlog.get_logger("control_plane.background")


class _Worker(Protocol):
    def start(self) -> object: ...

    def stop(self) -> object: ...


def build_observer(settings: Settings, fleet: Fleet) -> Observer | None:
    """The observer over the fleet's object storage, reading with a Read+List key of its own where the store can
    issue one (the embedded SeaweedFS), else with the storage's key. None when disabled or the storage is not S3."""
    if not settings.observer or not isinstance(fleet.storage, ObjectStorage):
        return None
    key: tuple[str, str] | None = None
    if isinstance(fleet.credentials, SeaweedCredentials):
        try:
            issued = fleet.credentials.issue_observer()
            key = (issued.access_key, issued.secret_key)
        except Exception as exc:  # the storage's own key still works: degrade, do not refuse to start
            log.warning("observer.key_failed", error=str(exc))
    config = ObserverSettings(
        cache_dir=settings.observer_cache_dir,
        max_followers=settings.observer_max_followers,
        follow_interval=settings.observer_follow_interval,
        periodic_interval=settings.observer_periodic_interval,
    )
    from control_plane.observer import Observer

    return Observer(fleet.storage, config, credentials=key)


def lag_sampler(settings: Settings, fleet: Fleet) -> LagSampler:
    """Replication lag of every running agent, measured against the store (written on the agents' rows)."""
    from control_plane.observer import LagSampler, LagThresholds

    thresholds = LagThresholds(settings.replication_lagging_after, settings.replication_stalled_after)
    return LagSampler(fleet.engine, fleet.storage, thresholds)


class Background:
    """The background work of one control plane, started by a thread of its own and stopped in reverse order.

    `stop()` may come while that thread is still starting things: it waits for the step in progress, and nothing
    starts after it (each start happens under the lock that `stop()` takes)."""

    def __init__(self, settings: Settings, fleet: Fleet, slot: State) -> None:
        self.settings, self.fleet, self.slot = settings, fleet, slot
        self.engine = fleet.engine
        self._lock = threading.Lock()
        self._stopping = False
        self._started: list[_Worker] = []
        self._closers: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._bring_up, name="litefleet-background-start", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _launch(self, worker: _Worker) -> bool:
        with self._lock:
            if self._stopping:
                return False
            worker.start()
            self._started.append(worker)
            return True

    def _bring_up(self) -> None:
        from control_plane.reconciler.health import HealthMonitor
        from control_plane.reconciler.pool import PoolRefiller
        from control_plane.reconciler.runners import runners
        from control_plane.reconciler.worker import Reconciler

        try:
            self._check_bucket()
            reconciler = Reconciler(
                self.engine,
                runners(self.fleet),
                workers=self.settings.workers,
                lease=self.settings.lease_seconds,
                stuck_after=self.settings.stuck_after,
                stuck_interval=self.settings.stuck_interval,
                node_workers=self.settings.node_workers,
                on_finished=self.slot.waits.operation_finished,  # `?wait=` answers as soon as it finished here
            )
            if not self._launch(reconciler):
                return
            self.slot.operation_queued = reconciler.wake  # the API's queued operations start now, not at a tick
            if not self._launch(HealthMonitor(self.engine, self.fleet, self.settings)):
                return
            if not self._launch(PoolRefiller(self.fleet)):  # with no pool wanted, it empties the old ones once
                return
            sampler = lag_sampler(self.settings, self.fleet)
            with self._lock:
                self._closers.append(sampler.close)

            def sample() -> None:
                sampler.tick()

            lag = Periodic("litefleet-lag", self.settings.lag_sample_interval, sample, first_at_once=True)
            if not self._launch(lag):
                return
            self._bring_up_observer()
        except Exception:  # a half-started control plane still serves the API; say what did not start
            log.exception("control_plane.background_failed")
        finally:
            log.info("control_plane.background_started", workers=[type(w).__name__ for w in self._started])

    def _check_bucket(self) -> None:
        """The bucket exists (an external S3 may need it made). A store that does not answer yet is no reason to
        stop here: every operation checks the store before it stops anything (fleet/preflight.py)."""
        storage = self.fleet.storage
        if isinstance(storage, ObjectStorage):
            try:
                storage.ensure_bucket()
            except Exception as exc:
                log.warning("store.bucket_check_failed", error=f"{type(exc).__name__}: {exc}")

    def _bring_up_observer(self) -> None:
        if self.slot.observer is None:
            built = build_observer(self.settings, self.fleet)
            if built is None:
                return
            with self._lock:
                if self._stopping:
                    built.close()
                    return
                self.slot.observer = built
                self._closers.append(self._close_observer)
        watched = self.slot.observer
        assert watched is not None
        with self._lock:
            if self._stopping:
                return
            watched.start()  # one the caller handed in is the caller's to close

        from control_plane.observer.fleet_sync import sync_followers

        def sync() -> None:
            sync_followers(watched, self.engine)

        interval = self.settings.observer_sync_interval
        self._launch(Periodic("litefleet-observer-sync", interval, sync, first_at_once=True))

    def _close_observer(self) -> None:
        observer, self.slot.observer = self.slot.observer, None
        if observer is not None:
            observer.close()

    def stop(self) -> None:
        """Stop what started, newest first, after the starting thread is done (it starts nothing more)."""
        with self._lock:
            self._stopping = True
        self._thread.join()
        for worker in reversed(self._started):
            worker.stop()
        for close in reversed(self._closers):
            close()
