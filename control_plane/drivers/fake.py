"""An engine in memory, for tests: containers by name that start and stop at once. Implements `Driver`.

`reachable = False` turns the node off: every verb then raises EngineUnreachable, as a lost node's engine would.
`on_run` and `on_stop` let a test play the agent's part (its replica, its shutdown record); `on_follow` says how far a
follower's copy is (default: it applied everything), `follower_lag` holds it that many transactions behind, and
`refuse_promotion` makes a promoted follower exit (exit code 5: the tail never arrived). `pool` holds the warm pool's
unclaimed containers; a claim moves one into `containers` (`claimed` names the pool containers each claim used)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from agent_image.contract import AgentSecrets
from control_plane.drivers.agent_spec import AgentSpec, PoolSpec
from control_plane.drivers.base import EngineUnreachable, Incarnation, PoolMember


@dataclass
class FakeContainer:
    spec: AgentSpec
    status: str = "running"
    exit_code: int | None = None
    deliveries: list[AgentSecrets] = field(default_factory=list)  # secrets delivered, one per start (tests check)
    following: bool = False  # a warm move's follower not promoted yet: serves nothing, writes no replica
    promoted_at: int | None = None  # the source's final txid its promotion named
    memory_mb: int | None = None  # the container's memory limit (a follower's allowance until lowered)
    claimed_from: str | None = None  # the pool container it was (None: started cold)


class FakeDriver:
    def __init__(
        self,
        engine_url: str,
        *,
        on_run: Callable[[AgentSpec], None] = lambda spec: None,
        on_stop: Callable[[AgentSpec], None] = lambda spec: None,
        on_follow: Callable[[AgentSpec], int] = lambda spec: 1 << 62,
    ) -> None:
        self.engine_url = engine_url
        self.containers: dict[str, FakeContainer] = {}
        self.reachable = True
        self.runtimes_offered = ["runc"]  # what `docker info` would list; a test adds "runsc"
        self._on_run = on_run
        self._on_stop = on_stop
        self._on_follow = on_follow
        self.follower_lag = 0
        self.refuse_promotion = False
        self.pool: dict[str, tuple[PoolSpec, str]] = {}  # name -> (spec, status)
        self._lock = threading.RLock()

    def ping(self) -> None:
        self._check()

    def runtimes(self) -> list[str]:
        self._check()
        return list(self.runtimes_offered)

    def ensure_image(self, image: str) -> float:
        self._check()
        return 0.0

    def run(self, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation:
        """Create and start the incarnation, or return it as it is when it exists (an exited one is reported).
        `complete()`: `spec` with its secrets, asked for outside the lock (as the real key mint runs beside the
        start); when it raises nothing is made."""
        with self._lock:
            self._check()
        full = spec if complete is None else complete()
        with self._lock:
            if full.name not in self.containers:
                self.containers[full.name] = FakeContainer(
                    full, deliveries=[full.secrets()], following=full.follow, memory_mb=full.container_memory_mb
                )
                if not full.follow:
                    self._on_run(full)
            return self._incarnation(full.name)

    def inspect(self, name: str) -> Incarnation | None:
        with self._lock:
            self._check()
            return self._incarnation(name) if name in self.containers else None

    def restart(self, name: str, secrets: AgentSecrets) -> Incarnation | None:
        with self._lock:
            self._check()
            container = self.containers.get(name)
            if container is None:
                return None
            if container.status != "running":
                container.status, container.exit_code = "running", None
                if not container.following:
                    self._on_run(container.spec)
            container.deliveries.append(secrets)
            return self._incarnation(name)

    def follower_txid(self, name: str) -> int | None:
        with self._lock:
            self._check()
            container = self.containers.get(name)
            if container is None or container.status != "running" or not container.following:
                return None
            return max(0, self._on_follow(container.spec) - self.follower_lag)

    def promote(self, name: str, secrets: AgentSecrets, txid: int, timeout: float) -> Incarnation | None:
        """As a follower does: its secrets, then (if it follows) it applies the tail and starts as the agent, or
        exits 5 under `refuse_promotion`. A promoted one ignores a repeated order."""
        with self._lock:
            self._check()
            container = self.containers.get(name)
            if container is None:
                return None
            container.status, container.exit_code = "running", None
            container.deliveries.append(secrets)
            if container.following:
                if self.refuse_promotion:
                    container.status, container.exit_code = "exited", 5
                else:
                    container.following, container.promoted_at = False, txid
                    self._on_run(container.spec)
            return self._incarnation(name)

    def limit_memory(self, name: str, memory_mb: int) -> bool:
        with self._lock:
            self._check()
            container = self.containers.get(name)
            if container is None:
                return False
            container.memory_mb = memory_mb
            return True

    def start_pool(self, spec: PoolSpec) -> PoolMember:
        with self._lock:
            self._check()
            self.pool[spec.name] = (spec, "running")
            return PoolMember(spec.name, spec.image, "running")

    def list_pool(self, fleet: str) -> list[PoolMember]:
        with self._lock:
            self._check()
            return [
                PoolMember(name, spec.image, status)
                for name, (spec, status) in sorted(self.pool.items())
                if spec.fleet == fleet
            ]

    def claim(self, name: str, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation | None:
        """As DockerDriver.claim: None (start cold) for a restore, a follower, runsc, another image, a pool container
        that is gone or stopped; an existing incarnation is returned as it is; `complete()` (spec with its secrets)
        is called last, and when it raises the pool container is gone and the error raised."""
        with self._lock:
            self._check()
            if spec.name in self.containers:
                return self._incarnation(spec.name)
            member = self.pool.get(name)
            if not spec.claimable or member is None:
                return None
            if member[1] != "running" or member[0].image != spec.image:
                return None
            del self.pool[name]
        full = spec if complete is None else complete()  # outside the lock, as the real key mint runs
        with self._lock:
            self.containers[spec.name] = FakeContainer(full, deliveries=[full.secrets()], claimed_from=name)
            self._on_run(full)
            return self._incarnation(spec.name)

    def stop(self, name: str, timeout: float) -> Incarnation | None:
        with self._lock:
            self._check()
            container = self.containers.get(name)
            if container is None:
                return None
            if container.status == "running":
                container.status, container.exit_code = "exited", 0
                self._on_stop(container.spec)
            return self._incarnation(name)

    def signal_stop(self, name: str) -> Incarnation | None:
        """A fake container stops at once (its record written): as a real one that exited before the next look."""
        with self._lock:
            self._check()
            found = self._incarnation(name) if name in self.containers else None
        self.stop(name, timeout=0)
        return found

    def remove(self, name: str) -> None:
        with self._lock:
            self._check()
            self.containers.pop(name, None)
            self.pool.pop(name, None)

    def list_managed(self, fleet: str | None = None) -> list[Incarnation]:
        with self._lock:
            self._check()
            return [
                self._incarnation(name)
                for name, container in sorted(self.containers.items())
                if fleet is None or container.spec.fleet == fleet
            ]

    def url(self, name: str) -> str:
        return f"fake://{self.engine_url}/{name}"

    def _incarnation(self, name: str) -> Incarnation:
        container = self.containers[name]
        spec = container.spec
        url = self.url(name) if container.status == "running" and not container.following else None
        return Incarnation(name, spec.tenant, spec.agent, spec.generation, container.status, container.exit_code, url)

    def _check(self) -> None:
        if not self.reachable:
            raise EngineUnreachable(f"engine {self.engine_url} does not answer (fake: unreachable)")
