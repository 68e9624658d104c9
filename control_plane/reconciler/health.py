"""Node heartbeats: ping every engine; a node is `down` only after several misses in a row (one miss is not death),
and `ready` again when a down node answers. Each running agent's `/readyz` (replication lag, last sync) is
recorded on its row, which is what a fail-over reports its loss against."""

from __future__ import annotations

import threading
import time

import docker.errors
import httpx
import structlog
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
    OperationState,
    Tenant,
)
from control_plane.drivers.agent_spec import incarnation_name
from control_plane.drivers.base import EngineUnreachable
from control_plane.fleet.incarnations import Fleet
from control_plane.settings import Settings

log = structlog.get_logger("control_plane.health")


class HealthMonitor:
    def __init__(self, engine: Engine, fleet: Fleet, settings: Settings) -> None:
        self.engine = engine
        self.fleet = fleet
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="litefleet-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """One round of pings. Safe to run at any time: it only records what each engine answered."""
        with Session(self.engine) as session:
            for node in session.exec(select(Node)).all():
                try:
                    self.fleet.driver(node).ping()
                    alive = True
                except EngineUnreachable:
                    alive = False
                if alive:
                    node.last_seen_at, node.missed_heartbeats = time.time(), 0
                    if node.state == NodeState.down:
                        node.state = NodeState.ready
                        session.add(Event(kind="node.up", node=node.name, message="engine answers again"))
                    self._remove_stale(session, node)
                    self._probe_agents(session, node)
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

    def _probe_agents(self, session: Session, node: Node) -> None:
        """Record each running agent's own view of its replication (its `/readyz`) on its row."""
        agents = session.exec(
            select(Agent).where(Agent.node == node.name).where(Agent.state == AgentState.running)
        ).all()
        for agent in agents:
            if not agent.url:
                continue
            agent.probed_at = time.time()
            try:
                answer = httpx.get(f"{agent.url}/readyz", timeout=2)
                replication = answer.json().get("replication") or {}
            except (httpx.HTTPError, ValueError):
                agent.ready = False
                self._repair_if_stopped(session, node, agent)
            else:
                agent.ready = answer.status_code == 200
                agent.local_txid = replication.get("local_txid")
                agent.replica_txid = replication.get("replica_txid")
                agent.lag_txids = replication.get("lag_txids")
                agent.seconds_since_sync = replication.get("seconds_since_sync")
            session.add(agent)

    def _repair_if_stopped(self, session: Session, node: Node, agent: Agent) -> None:
        """An agent that should run but whose container stopped gets a `scale` to the tenant's own count, which
        starts it again (unless an operation for the tenant is already queued or running: it will)."""
        try:
            container = self.fleet.driver(node).inspect(incarnation_name(agent.tenant, agent.ordinal, agent.generation))
        except EngineUnreachable:
            return
        if container is not None and container.status == "running":
            return
        busy = session.exec(
            select(Operation)
            .where(Operation.tenant == agent.tenant)
            .where(col(Operation.state).in_([OperationState.pending, OperationState.running]))
        ).first()
        tenant = session.get(Tenant, agent.tenant)
        if busy is not None or tenant is None:
            return
        op = Operation(kind=OperationKind.scale, tenant=agent.tenant, params={"agents": tenant.agents, "repair": True})
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
        log.warning("agent.down", tenant=agent.tenant, agent=agent.ordinal, node=node.name, op=op.id)

    def _remove_stale(self, session: Session, node: Node) -> None:
        """Remove this fleet's containers on `node` that are not the current incarnation of an agent placed there
        (zombies of a failed-over node, leftovers of an interrupted move). Only containers of agents this fleet
        knows, that have stopped or are of an older generation, are touched: a starting incarnation is not stale,
        and another fleet's (or a hand-made) container is never ours to remove."""
        try:
            found = self.fleet.driver(node).list_managed(fleet=self.fleet.storage.bucket)
        except EngineUnreachable:
            return
        for incarnation in found:
            agent = session.get(Agent, f"{incarnation.tenant}/{incarnation.agent}")
            if agent is None:
                continue
            current = agent.node == node.name and agent.generation == incarnation.generation
            older = incarnation.generation < agent.generation
            if not current and (older or incarnation.status == "exited"):
                try:
                    self.fleet.driver(node).remove(incarnation.name)
                except docker.errors.APIError as exc:  # an operation is removing it too: it will finish the job
                    log.info("agent.stale_remove_skipped", container=incarnation.name, error=str(exc))
                    continue
                session.add(
                    Event(
                        kind="agent.stale_removed",
                        tenant=incarnation.tenant,
                        node=node.name,
                        agent=incarnation.agent,
                        message=f"{incarnation.name} ({incarnation.status}) removed",
                    )
                )
                log.info("agent.stale_removed", container=incarnation.name, node=node.name)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.beat()
            except Exception as exc:
                log.warning("health.beat_failed", error=str(exc))
