"""The agent's HTTP API (`create_app`) and the server that runs it (`AgentServer`)."""

from agent_image.server._app import create_app
from agent_image.server._uvicorn import AgentServer

__all__ = ["AgentServer", "create_app"]
