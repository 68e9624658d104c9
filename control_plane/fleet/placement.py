"""Where a tenant's agents go: capacity-aware, spread over nodes, never onto a node that is not ready or whose
engine lacks the tenant's runtime (runsc tenants only land on nodes that registered runsc)."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import and_, case, or_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, func, select

from control_plane.db.models import (
    PLACED_STATES,
    UNFINISHED_STATES,
    Agent,
    AgentState,
    Node,
    NodeState,
    Operation,
    Tenant,
)

# whose row keeps its place on its node: placed agents, and failed ones (a repair starts them again in place)
HOLDING_STATES = (*PLACED_STATES, AgentState.failed)


class NoCapacity(Exception):
    code = "no_capacity"


class RuntimeUnavailable(NoCapacity):
    """No ready node offers the tenant's runtime at all: more capacity would not help, a node with it would."""

    code = "runtime_unavailable"


@dataclass(frozen=True)
class NodeLoad:
    node: Node
    agents: int  # agents placed on it (any tenant)
    memory_mb: int  # memory reserved by them
    tenant_agents: int  # of which belong to the tenant being placed

    def plus(self, memory_mb: int, same_tenant: bool) -> NodeLoad:
        """This load with one more agent on it."""
        return NodeLoad(self.node, self.agents + 1, self.memory_mb + memory_mb, self.tenant_agents + same_tenant)


def node_loads(session: Session, tenant: str, only: str | None = None) -> dict[str, NodeLoad]:
    """Every node's load (or node `only`'s) from the fleet DB: the agents whose row names it (placed, or failed:
    a repair starts it again in place, or held by an unfinished operation: a move's stopped source that a rollback
    restarts) and the agents unfinished operations reserved a place on it for (`Agent.reserved_node`, until their
    row names it), their memory, and how many are `tenant`'s. Reservations of operations that ended count nowhere.
    Grouped queries (not a row per agent: 40,000 agents took seconds to load as objects). A node's warm pool takes
    its containers' memory (as its last refill recorded it): a claim turns one into an agent, the refill starts
    another, so the pool's share stays taken."""
    nodes = select(Node) if only is None else select(Node).where(col(Node.name) == only)
    loads = {node.name: NodeLoad(node, 0, node.pool_size * node.pool_memory_mb, 0) for node in session.exec(nodes)}
    held = _held()
    on_its_row = or_(col(Agent.state).in_(HOLDING_STATES), held)
    elsewhere = and_(held, _not_there_yet())
    for on, counted in ((col(Agent.node), on_its_row), (col(Agent.reserved_node), elsewhere)):
        query = (
            select(
                on,
                func.count(),
                func.coalesce(func.sum(Tenant.memory_mb), 0),
                func.coalesce(func.sum(case((col(Agent.tenant) == tenant, 1), else_=0)), 0),
            )
            .join(Tenant, col(Agent.tenant) == col(Tenant.name))
            .where(on.is_not(None), counted, *(() if only is None else (on == only,)))
            .group_by(on)
        )
        for name, agents, memory_mb, mine in session.exec(query):
            if name in loads:
                load = loads[name]
                loads[name] = NodeLoad(
                    load.node,
                    load.agents + int(agents),
                    load.memory_mb + int(memory_mb),
                    load.tenant_agents + int(mine),
                )
    return loads


def reserve(session: Session, agent_id: str, tenant: Tenant, node: str, by: str, *, within_capacity: bool) -> bool:
    """Record in `session` (not committed) that operation `by` planned agent `agent_id`'s next incarnation on
    `node`. With `within_capacity` (a node placement chose), True only if the node is still ready, offers the
    tenant's runtime and has room counting it; a False leaves the caller to roll back and place again (another
    operation took the place, or a drain began, since its loads were read). Without it (kept, restarted in place,
    an explicit target), True unless the agent or the node is gone.

    Locks in this order, like every transaction that writes both: the agent's row first (its UPDATE is the
    transaction's first statement, so on SQLite it takes the write lock before any read and the count below is
    current), then the node's row (on PostgreSQL placements onto one node wait for each other's commits, and the
    count's statement sees them). Re-running it is harmless: the same reservation is written."""
    written = session.execute(
        update(Agent)
        .where(col(Agent.id) == agent_id)
        .values(reserved_node=node, reserved_by=by)
        .execution_options(synchronize_session=False)  # nothing may be read before this write
    )
    row = session.get(Node, node, with_for_update=True)
    if cast("CursorResult[Any]", written).rowcount != 1 or row is None:
        return False
    if not within_capacity:
        return True
    if row.state != NodeState.ready or tenant.runtime not in (row.runtimes or []):
        return False
    load = node_loads(session, tenant.name, only=node)[node]
    return load.agents <= row.capacity_agents and load.memory_mb <= row.capacity_memory_mb


def release_reservations(session: Session, by: str) -> None:
    """Forget the places operation `by` reserved (in `session`, not committed): it finished, and what it started
    counts by its rows now. Safe to call twice."""
    session.execute(
        update(Agent)
        .where(col(Agent.reserved_by) == by)
        .values(reserved_node=None, reserved_by=None)
        .execution_options(synchronize_session=False)
    )


def reserved_on(session: Session, node: str) -> int:
    """How many agents unfinished operations reserved a place on `node` for (they have not started there yet)."""
    query = select(func.count()).select_from(Agent).where(col(Agent.reserved_node) == node, _held(), _not_there_yet())
    return int(session.exec(query).one())


def choose_node(
    loads: Iterable[NodeLoad],
    tenant: str,
    memory_mb: int,
    exclude: AbstractSet[str] = frozenset(),
    runtime: str = "runc",
) -> Node:
    """The ready node offering `runtime` with room for one more agent of `tenant` that holds the fewest of its
    agents (spread), then the most free memory. Raises NoCapacity saying why each node was passed over, or
    RuntimeUnavailable when no ready node offers `runtime`."""
    reasons: list[str] = []
    candidates: list[NodeLoad] = []
    offered = False
    for load in loads:
        node = load.node
        has_runtime = runtime in (node.runtimes or [])
        offered = offered or (has_runtime and node.state == NodeState.ready)
        if node.name in exclude:
            reasons.append(f"{node.name}: excluded")
        elif node.state != NodeState.ready:
            reasons.append(f"{node.name}: {node.state.value}")
        elif not has_runtime:
            reasons.append(f"{node.name}: no {runtime} runtime (has {', '.join(node.runtimes or []) or 'none'})")
        elif load.agents >= node.capacity_agents:
            reasons.append(f"{node.name}: full ({load.agents}/{node.capacity_agents} agents)")
        elif load.memory_mb + memory_mb > node.capacity_memory_mb:
            free = node.capacity_memory_mb - load.memory_mb
            reasons.append(f"{node.name}: {free} MiB free, needs {memory_mb}")
        else:
            candidates.append(load)
    if not candidates:
        detail = "; ".join(reasons) if reasons else "no nodes registered"
        if reasons and not offered:
            raise RuntimeUnavailable(f"no ready node offers the {runtime} runtime for {tenant}: {detail}")
        raise NoCapacity(f"no node can take an agent of {tenant} ({memory_mb} MiB): {detail}")
    best = min(
        candidates,
        key=lambda load: (load.tenant_agents, -(load.node.capacity_memory_mb - load.memory_mb), load.node.name),
    )
    return best.node


def _held() -> ColumnElement[bool]:
    """The agent's reservation belongs to an operation that has not ended (one that ended holds nothing, even
    if its end was recorded by a control plane that did not clear it)."""
    return col(Agent.reserved_by).in_(select(Operation.id).where(col(Operation.state).in_(UNFINISHED_STATES)))


def _not_there_yet() -> ColumnElement[bool]:
    return or_(col(Agent.node).is_(None), col(Agent.node) != col(Agent.reserved_node))
