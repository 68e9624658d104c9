"""Where a tenant's agents go: capacity-aware, spread over nodes, never onto a node that is not ready or whose
engine lacks the tenant's runtime (runsc tenants only land on nodes that registered runsc)."""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from sqlalchemy import case, not_, or_, update
from sqlmodel import Session, col, func, select

from control_plane.db.models import PLACED_STATES, Agent, Node, NodeState, Tenant


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
    """Every node's load (or node `only`'s) from the fleet DB: its placed agents, the agents unfinished operations
    planned onto it that are not placed there yet (`Agent.reserved_node`), their memory, and how many are
    `tenant`'s. Grouped queries (not a row per agent: 40,000 agents took seconds to load as objects). A node's warm
    pool takes its containers' memory (as its last refill recorded it): a claim turns one into an agent, the refill
    starts another, so the pool's share stays taken."""
    nodes = select(Node) if only is None else select(Node).where(col(Node.name) == only)
    loads = {node.name: NodeLoad(node, 0, node.pool_size * node.pool_memory_mb, 0) for node in session.exec(nodes)}
    placed = col(Agent.state).in_(PLACED_STATES)
    not_placed_there = or_(col(Agent.node).is_(None), col(Agent.node) != col(Agent.reserved_node), not_(placed))
    for on, counted in ((col(Agent.node), placed), (col(Agent.reserved_node), not_placed_there)):
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
    `node`; with `within_capacity`, True only if the node still has room counting it (a False leaves the caller
    to roll back and place again: another operation took the place since its loads were read).

    The agent's row is written first (on SQLite that takes the database's write lock, so the count below is
    current), then the node's row is locked (on PostgreSQL placements onto one node wait for each other's
    commits, and the count's statement sees them). Re-running it is harmless: the same reservation is written."""
    session.execute(update(Agent).where(col(Agent.id) == agent_id).values(reserved_node=node, reserved_by=by))
    if session.get(Node, node, with_for_update=True) is None:
        return False
    load = node_loads(session, tenant.name, only=node).get(node)
    if load is None or not within_capacity:
        return load is not None
    return load.agents <= load.node.capacity_agents and load.memory_mb <= load.node.capacity_memory_mb


def release_reservations(session: Session, by: str) -> None:
    """Forget the places operation `by` reserved (in `session`, not committed): it finished, and what it started
    counts by its rows now. Safe to call twice."""
    session.execute(update(Agent).where(col(Agent.reserved_by) == by).values(reserved_node=None, reserved_by=None))


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
