"""What an operation decides for one agent before it acts, recorded in the operation so a re-run follows it.

Planning is pure: it reads the agent row and facts handed in (as callables, so a fact is looked up only when the
decision needs it) and returns a typed plan; the runner looks at the world, records the plan, then acts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from control_plane.db.models import Agent, AgentState


@dataclass(frozen=True)
class StartPlan:
    """Run generation `generation` of an agent on `node`, restoring from `restore_from`'s replica (None: a new
    database, or the incarnation's own volume). `keep`: it already runs as planned, nothing to do."""

    generation: int
    node: str
    restore_from: int | None = None
    keep: bool = False


@dataclass(frozen=True)
class MovePlan:
    """Stop generation `from_generation` on `from_node`, then start `generation` on `node` from its replica."""

    from_generation: int
    from_node: str
    generation: int
    node: str


Plan = StartPlan | MovePlan


def to_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)


def from_json(data: dict[str, Any]) -> Plan:
    """A recorded plan (written by this code, or by the untyped dicts of earlier versions: same keys)."""
    if "from_generation" in data:
        return MovePlan(
            from_generation=int(data["from_generation"]),
            from_node=str(data["from_node"]),
            generation=int(data["generation"]),
            node=str(data["node"]),
        )
    restore_from = data.get("restore_from")
    return StartPlan(
        generation=int(data["generation"]),
        node=str(data["node"]),
        restore_from=int(restore_from) if restore_from else None,
        keep=bool(data.get("keep", False)),
    )


def plan_start(
    agent: Agent, *, alive: Callable[[], bool], current: Callable[[], int | None], place: Callable[[], str]
) -> StartPlan:
    """How to make `agent` run.

    - running as recorded: keep it when its container runs (`alive()`), else start the same generation again;
    - an earlier attempt died while starting, stopping (or failed) an incarnation: start that one again in place
      (its volume holds what it committed; a missing container's own replica, if it made one, wins over the older
      generation's in the entrypoint). A new generation would refuse to start beside it (`stopped_before_start`);
    - otherwise a new generation past both the row's and CURRENT's (`current()`), restoring the newest replica,
      on the node `place()` picks."""
    if agent.state == AgentState.running and agent.node is not None:
        return StartPlan(agent.generation, agent.node, None, keep=alive())
    if agent.state in (AgentState.starting, AgentState.stopping, AgentState.failed) and agent.generation and agent.node:
        return StartPlan(agent.generation, agent.node, agent.generation - 1 or None)
    last = max(agent.generation, current() or 0)
    return StartPlan(last + 1, place(), last or None)


def plan_move(agent: Agent, *, target: str | None, place: Callable[[], str]) -> MovePlan:
    """The agent's next generation on `target` (or where `place()` puts it), from the one it runs now."""
    return MovePlan(
        from_generation=agent.generation,
        from_node=str(agent.node),
        generation=agent.generation + 1,
        node=target or place(),
    )
