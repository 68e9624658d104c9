"""Incarnation names: `lf-<tenant>-<agent>-g<generation>`, the container's and (for a container started for it) the
volume's. Its own module: the network code needs it too, below `agent_spec`."""

from __future__ import annotations

import re

_INCARNATION_NAME = re.compile(r"^lf-(?P<tenant>[a-z0-9][a-z0-9-]*)-(?P<agent>[0-9]+)-g(?P<generation>[0-9]+)$")


def incarnation_name(tenant: str, agent: int, generation: int) -> str:
    """The container (and volume) name of one incarnation: `lf-<tenant>-<agent>-g<generation>`."""
    return f"lf-{tenant}-{agent}-g{generation}"


def parse_incarnation_name(name: str) -> tuple[str, int, int] | None:
    """(tenant, agent, generation) of a name made by `incarnation_name` (`lf-<tenant>-<agent>-g<generation>`): how a
    claimed pool container, whose labels were set before it had an identity, is known. None for any other name."""
    found = _INCARNATION_NAME.match(name.lstrip("/"))
    if found is None:
        return None
    return found["tenant"], int(found["agent"]), int(found["generation"])
