"""What the control plane asks of a node: the `Driver` protocol, and what a driver answers with.

Every verb is safe to repeat, and every verb that talks to the node's engine raises `EngineUnreachable` when the
engine does not answer (in time): callers need to catch that one exception, never the SDK's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent_image.contract import AgentSecrets

if TYPE_CHECKING:  # agent_spec imports the docker SDK, which the protocol does not need
    from control_plane.drivers.agent_spec import AgentSpec, PoolSpec


class EngineUnreachable(Exception):
    code = "engine_unreachable"


@dataclass(frozen=True)
class Incarnation:
    name: str
    tenant: str
    agent: int
    generation: int
    status: str  # created, running, exited, ...
    exit_code: int | None
    url: str | None


@dataclass(frozen=True)
class PoolMember:
    """One warm pool container on a node, not claimed yet: `ready` when it runs (idle, waiting for a claim)."""

    name: str
    image: str
    status: str

    @property
    def ready(self) -> bool:
        return self.status == "running"


class Driver(Protocol):
    def ping(self) -> None: ...
    def runtimes(self) -> list[str]: ...
    def ensure_image(self, image: str) -> float: ...
    def run(self, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None) -> Incarnation: ...
    def inspect(self, name: str) -> Incarnation | None: ...
    def restart(self, name: str, secrets: AgentSecrets) -> Incarnation | None: ...
    def stop(self, name: str, timeout: float) -> Incarnation | None: ...
    def signal_stop(self, name: str) -> Incarnation | None: ...  # SIGTERM, no wait; status as before it
    def remove(self, name: str) -> None: ...
    def list_managed(self, fleet: str | None = None) -> list[Incarnation]: ...
    # warm moves: a follower is `run` from a spec with `follow=True`; it serves nothing until promoted
    def follower_txid(self, name: str) -> int | None: ...
    def promote(self, name: str, secrets: AgentSecrets, txid: int, timeout: float) -> Incarnation | None: ...
    def limit_memory(self, name: str, memory_mb: int) -> bool: ...  # False: the container is gone
    # warm pool: identity-less containers started ahead; a claim turns one into a NEW agent's incarnation
    def start_pool(self, spec: PoolSpec) -> PoolMember: ...
    def list_pool(self, fleet: str) -> list[PoolMember]: ...
    def claim(
        self, name: str, spec: AgentSpec, complete: Callable[[], AgentSpec] | None = None
    ) -> Incarnation | None: ...
