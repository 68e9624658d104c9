"""Compute drivers: the `Driver` protocol (`base`), the Docker engine (`docker`), the container contract of one
agent incarnation (`agent_spec`), the agent image (`images`) and an in-memory engine for tests (`fake`)."""

from control_plane.drivers.agent_spec import AgentSpec, incarnation_name
from control_plane.drivers.base import Driver, EngineUnreachable, Incarnation
from control_plane.drivers.docker import DockerDriver

__all__ = ["AgentSpec", "DockerDriver", "Driver", "EngineUnreachable", "Incarnation", "incarnation_name"]
