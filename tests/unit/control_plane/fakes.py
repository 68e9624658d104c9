"""In-memory stand-ins for the fleet's ports, playing the agents' part too, and a crasher that kills the control
plane (as kill -9 would) before or after its Nth call to any of them.

Object storage is faked, not run: the agents' side of it (a replica that grows, a shutdown record written on a
clean stop) has to be played by the test anyway when no container runs, and the embedded SeaweedFS spends ~0.25 s
per identity change, which would turn each crash point into seconds."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from agent_image.contract import AgentSecrets
from control_plane.drivers.agent_http import Readiness
from control_plane.drivers.agent_spec import AgentSpec
from control_plane.drivers.base import Incarnation
from control_plane.drivers.fake import FakeContainer, FakeDriver
from control_plane.storage.credentials import TenantCredentials
from control_plane.storage.replicas import Current, CurrentMoved

BUCKET = "litefleet"


class StoreFrozen(Exception):
    """What a frozen store answers (boto3 raises ReadTimeoutError after its retries; any exception will do)."""


class FakeReplicas:
    """CURRENT markers (conditional writes, as S3's If-Match), replicas as their newest txid, shutdown records.

    `frozen = True` plays a SIGSTOPped store: every call raises StoreFrozen, and an agent stopped meanwhile cannot
    make its final sync (no shutdown record)."""

    bucket = BUCKET
    frozen = False

    def _check(self) -> None:
        if self.frozen:
            raise StoreFrozen("the store does not answer (fake: frozen)")

    def __init__(self) -> None:
        self.current: dict[tuple[str, int], Current] = {}
        self.txids: dict[tuple[str, int, int], int] = {}
        self.shutdowns: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._etags = itertools.count(1)
        self._lock = threading.Lock()
        self.stops = 0

    def replica_url(self, tenant: str, agent: int, generation: int) -> str:
        return f"s3://{BUCKET}/fleet/tenants/{tenant}/agents/{agent}/gen-{generation}/"

    def read_current(self, tenant: str, agent: int) -> Current | None:
        self._check()
        return self.current.get((tenant, agent))

    def advance_current(self, tenant: str, agent: int, generation: int, expected: Current | None) -> Current:
        self._check()
        with self._lock:
            if self.current.get((tenant, agent)) != expected:
                raise CurrentMoved(f"CURRENT of {tenant}/{agent} moved since it was read")
            written = Current(generation, f'"{next(self._etags)}"')
            self.current[(tenant, agent)] = written
            return written

    def read_shutdown(self, tenant: str, agent: int, generation: int) -> dict[str, Any] | None:
        self._check()
        return self.shutdowns.get((tenant, agent, generation))

    def replica_position(self, tenant: str, agent: int, generation: int) -> tuple[int, float | None]:
        self._check()
        txid = self.txids.get((tenant, agent, generation), 0)
        return txid, (time.time() if txid else None)

    def replica_txid(self, tenant: str, agent: int, generation: int) -> int:
        return self.replica_position(tenant, agent, generation)[0]

    def purge_tenant(self, tenant: str) -> int:
        self._check()
        with self._lock:
            keys = [key for key in self.txids if key[0] == tenant]
            for key in keys:
                del self.txids[key]
            for marker in [key for key in self.current if key[0] == tenant]:
                del self.current[marker]
            return len(keys)

    def purge_generation(self, tenant: str, agent: int, generation: int) -> int:
        self._check()
        with self._lock:
            found = self.txids.pop((tenant, agent, generation), None)
            self.shutdowns.pop((tenant, agent, generation), None)
            return 0 if found is None else 1

    def copy(self) -> FakeReplicas:
        twin = FakeReplicas()
        twin.current, twin.txids = dict(self.current), dict(self.txids)
        twin.shutdowns = {key: dict(record) for key, record in self.shutdowns.items()}
        twin._etags = itertools.count(next(self._etags) + 1000)
        twin.stops = self.stops + 1000
        return twin

    # -- the agents' part -------------------------------------------------------------------------------------------

    def agent_started(self, spec: AgentSpec) -> None:
        """The entrypoint restores (its own replica first, else the one it was told to restore from), then the
        agent commits a transaction that Litestream replicates."""
        own = (spec.tenant, spec.agent, spec.generation)
        restored = self.txids.get(own, 0)
        if not restored and spec.restore_from_url:
            source = int(spec.restore_from_url.rstrip("/").rsplit("gen-", 1)[1])
            restored = self.txids.get((spec.tenant, spec.agent, source), 0)
        self.txids[own] = restored + 1

    def followed(self, spec: AgentSpec) -> int:
        """A follower applies its source's replica as far as it goes."""
        assert spec.follow and spec.restore_from_url
        source = int(spec.restore_from_url.rstrip("/").rsplit("gen-", 1)[1])
        return self.txids.get((spec.tenant, spec.agent, source), 0)

    def agent_stopped(self, spec: AgentSpec) -> None:
        """A clean stop: the final sync, then the shutdown record naming the last transaction."""
        own = (spec.tenant, spec.agent, spec.generation)
        if not self.frozen:  # else the final sync fails: no record, the container is killed at the stop timeout
            self.stops += 1  # every stop's record is its own, as the agent's `finished_at` makes it
            self.shutdowns[own] = {"proven": True, "txid": self.txids.get(own, 0), "finished_at": self.stops}


class FakeCredentials:
    def __init__(self) -> None:
        self.issued: set[tuple[str, int, int]] = set()
        self.minted: list[tuple[str, int, int]] = []  # every issue, in order (a re-issue is another key)

    def issue_incarnation(self, tenant: str, agent: int, generation: int) -> TenantCredentials:
        self.issued.add((tenant, agent, generation))
        self.minted.append((tenant, agent, generation))
        return TenantCredentials(tenant, f"LF{tenant}{agent}{generation}", "secret")

    def revoke_incarnation(self, tenant: str, agent: int, generation: int) -> None:
        self.issued.discard((tenant, agent, generation))

    def copy(self) -> FakeCredentials:
        twin = FakeCredentials()
        twin.issued = set(self.issued)
        return twin


class RecordingDriver(FakeDriver):
    """A FakeDriver that appends each verb that changes a container to its engines' shared `history`:
    (engine URL, verb, container name), in the order they happened across all engines."""

    def __init__(self, engine_url: str, history: list[tuple[str, str, str]], **hooks: Any) -> None:
        super().__init__(engine_url, **hooks)
        self.history = history

    def run(self, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation:
        with self._lock:
            self.history.append((self.engine_url, "run", spec.name))
        return super().run(spec, complete)

    def restart(self, name: str, secrets: AgentSecrets) -> Incarnation | None:
        with self._lock:
            self.history.append((self.engine_url, "restart", name))
            return super().restart(name, secrets)

    def stop(self, name: str, timeout: float) -> Incarnation | None:
        with self._lock:
            container = self.containers.get(name)
            if container is not None and container.status == "running":  # else nothing changes: not a verb
                self.history.append((self.engine_url, "stop", name))
            return super().stop(name, timeout)

    def remove(self, name: str) -> None:
        with self._lock:
            self.history.append((self.engine_url, "remove", name))
            super().remove(name)


class FakeEngines:
    """One FakeDriver per engine URL (the fleet's `make_driver`), with the replicas playing the agents; `history`
    lists every container change on any of them, in order."""

    def __init__(self, replicas: FakeReplicas) -> None:
        self.replicas = replicas
        self.drivers: dict[str, FakeDriver] = {}
        self.history: list[tuple[str, str, str]] = []

    def __call__(self, engine_url: str) -> FakeDriver:
        if engine_url not in self.drivers:
            self.drivers[engine_url] = RecordingDriver(
                engine_url,
                self.history,
                on_run=self.replicas.agent_started,
                on_stop=self.replicas.agent_stopped,
                on_follow=self.replicas.followed,
            )
        return self.drivers[engine_url]

    def copy(self, replicas: FakeReplicas) -> FakeEngines:
        """The same engines and containers, playing agents against `replicas`."""
        twin = FakeEngines(replicas)
        for url, driver in self.drivers.items():
            copied = twin(url)
            copied.reachable = driver.reachable
            copied.follower_lag, copied.refuse_promotion = driver.follower_lag, driver.refuse_promotion
            copied.containers = {
                name: replace(c, deliveries=list(c.deliveries)) for name, c in driver.containers.items()
            }
        return twin

    def containers(self, tenant: str, agent: int) -> list[tuple[str, str, int]]:
        """(engine URL, status, generation) of every container of the agent on every reachable engine."""
        return [
            (url, container.status, container.spec.generation)
            for url, driver in sorted(self.drivers.items())
            if driver.reachable
            for container in driver.containers.values()
            if (container.spec.tenant, container.spec.agent) == (tenant, agent)
        ]


class FakeAgents:
    """The agents' HTTP side: ready while their container runs, replicated as far as their replica goes."""

    def __init__(self, engines: FakeEngines) -> None:
        self.engines = engines

    def _container(self, url: str) -> FakeContainer | None:
        engine_url, _, name = url.removeprefix("fake://").rpartition("/")
        driver = self.engines.drivers.get(engine_url)
        container = None if driver is None or not driver.reachable else driver.containers.get(name)
        return None if container is None or container.status != "running" else container

    def readyz(self, url: str, token: str, timeout: float = 2.0) -> Readiness | None:
        """As a real agent: no answer without its secrets, 401 (None here) for a token it was not given."""
        container = self._container(url)
        if container is None or not container.deliveries:
            return None
        given = container.deliveries[-1]
        if token not in (given.agent_token, given.admin_token):
            return None
        spec = container.spec
        txid = self.engines.replicas.txids.get((spec.tenant, spec.agent, spec.generation), 0)
        return Readiness(ready=True, local_txid=txid, replica_txid=txid, lag_txids=0, seconds_since_sync=0.0)

    def drain(self, url: str, admin_token: str) -> int:
        container = self._container(url)
        if container is None or container.deliveries[-1].admin_token != admin_token:
            raise httpx.HTTPStatusError("401", request=httpx.Request("POST", url), response=httpx.Response(401))
        return 0

    def in_flight(self, url: str, token: str) -> int:
        return 0


class Crash(BaseException):
    """The control plane died here (a BaseException: nothing in it catches this, as nothing survives kill -9)."""


class Crasher:
    """Counts calls to the ports it wraps; at crash point N (two per call: before it, and after it took effect)
    raises Crash, and keeps raising on every later call: a dead process does nothing more."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.points = 0
        self.dead = False
        self._lock = threading.Lock()

    def _point(self, where: str) -> None:
        with self._lock:
            if self.dead:
                raise Crash(where)
            self.points += 1
            if self.crash_at is not None and self.points == self.crash_at:
                self.dead = True
                raise Crash(where)

    def wrap(self, target: Any) -> Any:
        crasher = self

        class Wrapped:
            def __getattr__(self, name: str) -> Any:
                value = getattr(target, name)
                if not callable(value):
                    return value

                def call(*args: Any, **kwargs: Any) -> Any:
                    crasher._point(f"before {name}")
                    answer = value(*args, **kwargs)
                    crasher._point(f"after {name}")
                    return answer

                return call

            def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a factory (make_driver): wrap what it makes
                return crasher.wrap(target(*args, **kwargs))

        return Wrapped()


def fake_fleet(engine: Any, settings: Any, replicas: FakeReplicas | None = None) -> tuple[Any, FakeEngines]:
    """A Fleet over `engine` whose engines, object storage and agents are the fakes above (no Docker, no S3), and
    its engines (to look at or break them)."""
    from control_plane.fleet.incarnations import Fleet

    engines = FakeEngines(replicas or FakeReplicas())
    fleet = Fleet(
        engine,
        settings,
        storage=engines.replicas,
        credentials=FakeCredentials(),
        make_driver=engines,
        agents_api=FakeAgents(engines),
    )
    return fleet, engines
