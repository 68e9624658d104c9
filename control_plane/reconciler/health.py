"""Node heartbeats and agent probes. The monitor only observes and records, and queues work for what it finds:

- a node is `down` only after several missed heartbeats in a row (one miss is not death): a `failover` is queued;
  it is `ready` again when it answers;
- each running agent's `/readyz` (replication lag, last sync) is recorded on its row, which is what a fail-over
  reports its loss against; an agent whose container stopped gets a `scale` to its tenant's count (a repair);
- containers of this fleet that are not the current incarnation of their agent (zombies of a failed-over node,
  leftovers of an interrupted move) get a `cleanup` of their tenant on that node, which runs in the tenant's turn,
  never beside another operation of the same tenant.

Pings, probes and listings happen outside any transaction; each finding is written in a short one of its own."""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import (
    Agent,
    AgentState,
    Event,
    Node,
    NodeState,
    Operation,
    OperationKind,
    Tenant,
)
from control_plane.drivers.agent_http import Readiness
from control_plane.drivers.agent_spec import incarnation_name
from control_plane.drivers.base import EngineUnreachable, Incarnation
from control_plane.fleet.incarnations import Fleet
from control_plane.metrics import HEARTBEAT_SECONDS, PROBE_SECONDS
from control_plane.reconciler.claims import UNFINISHED
from control_plane.settings import Settings
from control_plane.timing import Periodic

log = structlog.get_logger("control_plane.health")
RUNTIMES_REFRESH = 60.0  # seconds between reads of a node's runtimes (`docker info`)


def is_stale(incarnation: Incarnation, agent: Agent | None, node: str) -> bool:
    """Not the current incarnation of an agent placed on `node`, and stopped or of an older generation. Only
    containers of agents this fleet knows count: a starting incarnation is not stale, and another fleet's (or a
    hand-made) container is never ours to remove."""
    if agent is None:
        return False
    current = agent.node == node and agent.generation == incarnation.generation
    older = incarnation.generation < agent.generation
    return not current and (older or incarnation.status == "exited")


class HealthMonitor:
    def __init__(self, engine: Engine, fleet: Fleet, settings: Settings) -> None:
        self.engine = engine
        self.fleet = fleet
        self.settings = settings
        self._periodic = Periodic("litefleet-health", settings.heartbeat_interval, self.beat)
        self._runtimes_read: dict[str, float] = {}  # node -> when its engine's runtimes were last read

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def beat(self) -> None:
        """One round of pings. Safe to run at any time: it records what each engine answered and queues work,
        never more than one unfinished operation per finding."""
        with Session(self.engine) as session:
            nodes = list(session.exec(select(Node)).all())
        for node in nodes:
            started = time.monotonic()
            try:
                self.fleet.driver(node).ping()
                alive = True
            except EngineUnreachable:
                alive = False
            HEARTBEAT_SECONDS.labels("ok" if alive else "unreachable").observe(time.monotonic() - started)
            self._record_heartbeat(node.name, alive)
            if alive:
                self._refresh_runtimes(node)
                self._queue_cleanups(node)
                self._probe_agents(node)

    def _record_heartbeat(self, name: str, alive: bool) -> None:
        with Session(self.engine) as session:
            node = session.get(Node, name)
            if node is None:  # removed meanwhile
                return
            if alive:
                node.last_seen_at, node.missed_heartbeats = time.time(), 0
                if node.state == NodeState.down:
                    node.state = NodeState.ready
                    session.add(Event(kind="node.up", node=node.name, message="engine answers again"))
            else:
                node.missed_heartbeats += 1
                down = node.missed_heartbeats >= self.settings.node_grace_heartbeats
                if down and node.state != NodeState.down:
                    node.state = NodeState.down
                    message = f"no answer to {node.missed_heartbeats} heartbeats: failing its agents over"
                    op = Operation(
                        kind=OperationKind.failover, node=node.name, params={"declared_down_at": time.time()}
                    )
                    session.add(op)
                    session.add(Event(kind="node.down", node=node.name, operation=op.id, message=message))
                    log.warning("node.down", node=node.name, missed=node.missed_heartbeats, op=op.id)
            session.add(node)
            session.commit()

    def _refresh_runtimes(self, node: Node) -> None:
        """Record the runtimes the node's engine offers (an engine restarted with runsc registered, or without it),
        at most once per `RUNTIMES_REFRESH` seconds per node: `docker info` costs more than a ping."""
        now = time.monotonic()
        if now - self._runtimes_read.get(node.name, -RUNTIMES_REFRESH) < RUNTIMES_REFRESH:
            return
        try:
            runtimes = self.fleet.driver(node).runtimes()
        except EngineUnreachable:
            return
        self._runtimes_read[node.name] = now
        if runtimes == node.runtimes:
            return
        with Session(self.engine) as session:
            session.execute(update(Node).where(col(Node.name) == node.name).values(runtimes=runtimes))
            message = f"engine offers {', '.join(runtimes)} (was {', '.join(node.runtimes or [])})"
            session.add(Event(kind="node.runtimes", node=node.name, message=message))
            session.commit()
        log.info("node.runtimes", node=node.name, runtimes=runtimes)

    def _probe_agents(self, node: Node) -> None:
        """Record each running agent's own view of its replication (its `/readyz`) on its row."""
        with Session(self.engine) as session:
            agents = list(
                session.exec(
                    select(Agent).where(Agent.node == node.name).where(Agent.state == AgentState.running)
                ).all()
            )
        for agent in agents:
            if not agent.url or not agent.agent_token:
                continue
            probed_at, started = time.time(), time.monotonic()
            readiness = self.fleet.agents_api.readyz(agent.url, agent.agent_token, timeout=2)
            PROBE_SECONDS.labels("ok" if readiness is not None else "no_answer").observe(time.monotonic() - started)
            values: dict[str, Any] = {"probed_at": probed_at, "ready": False}
            if readiness is not None:
                values = {"probed_at": probed_at, **_health(readiness)}
            with Session(self.engine) as session:
                # only the incarnation that was probed: an operation may have moved the agent meanwhile
                session.execute(
                    update(Agent)
                    .where(col(Agent.id) == agent.id)
                    .where(col(Agent.generation) == agent.generation)
                    .where(col(Agent.node) == node.name)
                    .values(**values)
                )
                session.commit()
            if readiness is None:
                self._repair_if_stopped(node, agent)

    def _repair_if_stopped(self, node: Node, agent: Agent) -> None:
        """An agent that should run but whose container stopped gets a `scale` to the tenant's own count, which
        starts it again (unless an operation for the tenant is already queued or running: it will)."""
        try:
            container = self.fleet.driver(node).inspect(incarnation_name(agent.tenant, agent.ordinal, agent.generation))
        except EngineUnreachable:
            return
        if container is not None and container.status == "running":
            return
        with Session(self.engine) as session:
            tenant = session.get(Tenant, agent.tenant)
            if _busy(session, agent.tenant) or tenant is None:
                return
            op = Operation(
                kind=OperationKind.scale, tenant=agent.tenant, params={"agents": tenant.agents, "repair": True}
            )
            session.add(op)
            status = "gone" if container is None else f"{container.status} (exit {container.exit_code})"
            session.add(
                Event(
                    kind="agent.down",
                    tenant=agent.tenant,
                    node=node.name,
                    agent=agent.ordinal,
                    operation=op.id,
                    message=f"container is {status}: starting it again",
                )
            )
            session.commit()
        log.warning("agent.down", tenant=agent.tenant, agent=agent.ordinal, node=node.name, op=op.id)

    def _queue_cleanups(self, node: Node) -> None:
        """Queue a `cleanup` for each tenant with stale containers on `node` (unless the tenant has an unfinished
        operation: that one may be about to remove them, and the next beat looks again)."""
        try:
            found = self.fleet.driver(node).list_managed(fleet=self.fleet.storage.bucket)
        except EngineUnreachable:
            return
        with Session(self.engine) as session:
            stale: dict[str, list[str]] = {}
            for incarnation in found:
                if is_stale(incarnation, session.get(Agent, f"{incarnation.tenant}/{incarnation.agent}"), node.name):
                    stale.setdefault(incarnation.tenant, []).append(incarnation.name)
            for tenant, names in sorted(stale.items()):
                if _busy(session, tenant):
                    continue
                op = Operation(kind=OperationKind.cleanup, tenant=tenant, node=node.name, params={"found": names})
                session.add(op)
                session.add(
                    Event(
                        kind="agent.stale_found",
                        tenant=tenant,
                        node=node.name,
                        operation=op.id,
                        message=f"{', '.join(sorted(names))}: queued for removal",
                    )
                )
                log.info("agent.stale_found", tenant=tenant, node=node.name, containers=names, op=op.id)
            session.commit()


def _busy(session: Session, tenant: str) -> bool:
    unfinished = session.exec(
        select(Operation).where(Operation.tenant == tenant).where(col(Operation.state).in_(UNFINISHED))
    ).first()
    return unfinished is not None


def _health(readiness: Readiness) -> dict[str, Any]:
    return {
        "ready": readiness.ready,
        "local_txid": readiness.local_txid,
        "replica_txid": readiness.replica_txid,
        "lag_txids": readiness.lag_txids,
        "seconds_since_sync": readiness.seconds_since_sync,
    }
