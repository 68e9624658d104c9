"""Node heartbeats and agent probes. The monitor only observes and records, and queues work for what it finds:

- a node is `down` only after several missed heartbeats in a row (one miss is not death): a `failover` is queued;
  it is `ready` again when it answers;
- each running agent's `/readyz` (replication lag, last sync) is recorded on its row, which is what a fail-over
  reports its loss against; an agent whose container stopped gets a `scale` to its tenant's count (a repair);
- containers of this fleet that are not the current incarnation of their agent (zombies of a failed-over node,
  leftovers of an interrupted move) get a `cleanup` of their tenant on that node, which runs in the tenant's turn,
  never beside another operation of the same tenant.

Pings, probes and listings run in parallel (a bounded pool) outside any transaction; a round's findings are written
in one short transaction afterwards."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import structlog
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import (
    UNFINISHED_STATES,
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
from control_plane.metrics import HEARTBEAT_ROUND_SECONDS, HEARTBEAT_SECONDS, PROBE_SECONDS
from control_plane.settings import Settings
from control_plane.timing import Periodic

log = structlog.get_logger("control_plane.health")
RUNTIMES_REFRESH = 60.0  # seconds between reads of a node's runtimes (`docker info`)

PROBE_TIMEOUT = 2.0  # seconds an agent's /readyz may take before it counts as no answer


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
    """Two fixed-rate loops: heartbeats (every node pinged at once, each ping bounded by `heartbeat_timeout`, all
    results written in one short transaction) and probes (stale containers, every running agent's `/readyz` at
    once through one pooled client, all results written in one short transaction). Neither holds a transaction
    while it waits on the network, and neither waits on the other: a slow probe round never delays the
    heartbeats a down node is detected by, which is then at most `max(heartbeat_interval, heartbeat_timeout) x
    node_grace_heartbeats + heartbeat_timeout` after it froze (a round waits out the frozen node's ping)."""

    def __init__(self, engine: Engine, fleet: Fleet, settings: Settings) -> None:
        self.engine = engine
        self.fleet = fleet
        self.settings = settings
        # two pools: probes of many agents never queue a heartbeat behind them
        self._pings = ThreadPoolExecutor(max_workers=settings.health_parallelism, thread_name_prefix="litefleet-ping")
        self._probes = ThreadPoolExecutor(max_workers=settings.health_parallelism, thread_name_prefix="litefleet-probe")
        interval = settings.heartbeat_interval
        self._periodic = [
            Periodic("litefleet-heartbeat", interval, self.heartbeat, fixed_rate=True),
            Periodic("litefleet-probe", interval, self.probe, fixed_rate=True),
        ]
        self._runtimes_read: dict[str, float] = {}  # node -> when its engine's runtimes were last read

    def start(self) -> None:
        for periodic in self._periodic:
            periodic.start()

    def stop(self) -> None:
        for periodic in self._periodic:
            periodic.stop()
        for pool in (self._pings, self._probes):
            pool.shutdown(wait=False, cancel_futures=True)

    def beat(self) -> None:
        """One heartbeat round, then one probe round (what the two loops do, in one call)."""
        self.heartbeat()
        self.probe()

    def heartbeat(self) -> None:
        """Ping every node at once; a node that has not answered within `heartbeat_timeout` missed this beat.
        Safe to run at any time: it records what each engine answered and queues at most one fail-over per node
        going down."""
        with Session(self.engine) as session:
            nodes = list(session.exec(select(Node)).all())
        if not nodes:
            return
        started = time.monotonic()
        pings = {self._pings.submit(self._ping, node): node.name for node in nodes}
        done, _ = wait(pings, timeout=self.settings.heartbeat_timeout)
        alive = {pings[future]: future in done and future.result() for future in pings}
        for _ in range(list(alive.values()).count(False)):
            HEARTBEAT_SECONDS.labels("unreachable").observe(time.monotonic() - started)
        self._record_heartbeats(alive)
        HEARTBEAT_ROUND_SECONDS.observe(time.monotonic() - started)

    def _ping(self, node: Node) -> bool:
        started = time.monotonic()
        try:
            self.fleet.driver(node).ping()
        except EngineUnreachable:
            return False
        except Exception as exc:  # a driver that fails in any other way did not answer either
            log.warning("node.ping_failed", node=node.name, error=type(exc).__name__)
            return False
        HEARTBEAT_SECONDS.labels("ok").observe(time.monotonic() - started)
        return True

    def _record_heartbeats(self, alive: dict[str, bool]) -> None:
        """One short transaction for the whole round (rows removed meanwhile are skipped)."""
        now = time.time()
        with Session(self.engine) as session:
            for node in session.exec(select(Node).where(col(Node.name).in_(list(alive)))).all():
                if alive[node.name]:
                    node.last_seen_at, node.missed_heartbeats = now, 0
                    if node.state == NodeState.down:
                        node.state = NodeState.ready
                        session.add(Event(kind="node.up", node=node.name, message="engine answers again"))
                else:
                    node.missed_heartbeats += 1
                    down = node.missed_heartbeats >= self.settings.node_grace_heartbeats
                    if down and node.state != NodeState.down:
                        node.state = NodeState.down
                        message = f"no answer to {node.missed_heartbeats} heartbeats: failing its agents over"
                        op = Operation(kind=OperationKind.failover, node=node.name, params={"declared_down_at": now})
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

    def probe(self) -> None:
        """Queue cleanups of stale containers and record every running agent's `/readyz` on the nodes that answer
        heartbeats (all listings and probes at once). Safe to run at any time: it only records what agents
        answered and queues at most one unfinished operation per finding."""
        with Session(self.engine) as session:
            nodes = list(session.exec(select(Node).where(Node.state != NodeState.down)).all())
            agents = list(
                session.exec(
                    select(Agent)
                    .where(col(Agent.node).in_([node.name for node in nodes]))
                    .where(Agent.state == AgentState.running)
                ).all()
            )
        by_name = {node.name: node for node in nodes}
        listings = [self._probes.submit(self._queue_cleanups, node) for node in nodes]
        listings += [self._probes.submit(self._refresh_runtimes, node) for node in nodes]
        probed = [agent for agent in agents if agent.url and agent.agent_token]
        answers = list(self._probes.map(self._probe, probed))
        self._record_probes(list(zip(probed, answers, strict=True)))
        silent = [
            (by_name[agent.node], agent)
            for agent, (_, readiness) in zip(probed, answers, strict=True)
            if readiness is None and agent.node in by_name
        ]
        repairs = [self._probes.submit(self._repair_if_stopped, node, agent) for node, agent in silent]
        for future in [*listings, *repairs]:
            future.result()

    def _probe(self, agent: Agent) -> tuple[float, Readiness | None]:
        probed_at, started = time.time(), time.monotonic()
        try:
            readiness = self.fleet.agents_api.readyz(agent.url or "", agent.agent_token or "", timeout=PROBE_TIMEOUT)
        except Exception as exc:  # whatever one agent answers, the round records every other agent's
            log.warning("health.probe_failed", tenant=agent.tenant, agent=agent.ordinal, error=type(exc).__name__)
            readiness = None
        PROBE_SECONDS.labels("ok" if readiness is not None else "no_answer").observe(time.monotonic() - started)
        return probed_at, readiness

    def _record_probes(self, results: list[tuple[Agent, tuple[float, Readiness | None]]]) -> None:
        """Each agent's own view of its replication on its row, all in one short transaction (two statements run
        with many parameter sets); only on the incarnation that was probed (an operation may have moved the
        agent meanwhile)."""
        answered: list[dict[str, Any]] = []
        silent: list[dict[str, Any]] = []
        for agent, (probed_at, readiness) in results:
            where = {"b_id": agent.id, "b_generation": agent.generation, "b_node": agent.node, "probed_at": probed_at}
            if readiness is None:
                silent.append({**where, "ready": False})
            else:
                answered.append({**where, **_health(readiness)})
        table = Agent.__table__  # type: ignore[attr-defined]
        match = update(table).where(
            table.c.id == bindparam("b_id"),
            table.c.generation == bindparam("b_generation"),
            table.c.node == bindparam("b_node"),
        )
        with self.engine.begin() as connection:
            for rows in (answered, silent):
                if rows:
                    connection.execute(match.values({key: bindparam(key) for key in rows[0] if key[:2] != "b_"}), rows)

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
            op = repair_operation(tenant)
            op_id = op.id  # the row expires at the commit, and the session is gone by the log line below
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
        log.warning("agent.down", tenant=agent.tenant, agent=agent.ordinal, node=node.name, op=op_id)

    def _queue_cleanups(self, node: Node) -> None:
        """Queue a `cleanup` for each tenant with stale containers on `node` (unless the tenant has an unfinished
        operation: that one may be about to remove them, and the next beat looks again)."""
        try:
            found = self.fleet.driver(node).list_managed(fleet=self.fleet.storage.bucket)
        except EngineUnreachable:
            return
        with Session(self.engine) as session:
            ids = [f"{incarnation.tenant}/{incarnation.agent}" for incarnation in found]
            agents = {agent.id: agent for agent in session.exec(select(Agent).where(col(Agent.id).in_(ids)))}
            stale: dict[str, list[str]] = {}
            for agent_id, incarnation in zip(ids, found, strict=True):
                if is_stale(incarnation, agents.get(agent_id), node.name):
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
        select(Operation).where(Operation.tenant == tenant).where(col(Operation.state).in_(UNFINISHED_STATES))
    ).first()
    return unfinished is not None


def _health(readiness: Readiness) -> dict[str, Any]:
    return {
        "ready": readiness.ready,
        "local_txid": readiness.local_txid,
        "replica_txid": readiness.replica_txid,
        "lag_txids": readiness.lag_txids,
        "seconds_since_sync": readiness.seconds_since_sync,
        "unconfirmed_commits": readiness.unconfirmed_commits,
    }


def repair_operation(tenant: Tenant, **why: str) -> Operation:
    """A `scale` of `tenant` to the agents it should have, marked as a repair (with `why`, for the event trail):
    what the health monitor and the stuck-state detector queue when an agent is down or stuck. A scale to the
    count the tenant already has starts what is missing and nothing else, so queueing it twice is harmless."""
    return Operation(
        kind=OperationKind.scale, tenant=tenant.name, params={"agents": tenant.agents, "repair": True, **why}
    )
