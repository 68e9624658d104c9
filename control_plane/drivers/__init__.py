"""Compute drivers: the `Driver` protocol (`base`), the Docker engine (`docker`), the container contract of one
agent incarnation (`agent_spec`), the agent image (`images`) and an in-memory engine for tests (`fake`).

Everything but the protocol is imported on first use: the docker SDK costs ~0.8 s of imports, which a control
plane's start (serving the API) does not need; its health monitor and reconciler import it in the background."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from control_plane.drivers.base import Driver, EngineUnreachable, Incarnation, PoolMember

if TYPE_CHECKING:
    from control_plane.drivers.agent_spec import AgentSpec, PoolSpec, incarnation_name
    from control_plane.drivers.docker import DockerDriver

_LAZY = {
    "AgentSpec": "agent_spec",
    "PoolSpec": "agent_spec",
    "incarnation_name": "agent_spec",
    "DockerDriver": "docker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"control_plane.drivers.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "AgentSpec",
    "DockerDriver",
    "Driver",
    "EngineUnreachable",
    "Incarnation",
    "PoolMember",
    "PoolSpec",
    "incarnation_name",
]
