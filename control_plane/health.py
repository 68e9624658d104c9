"""Node heartbeats: ping every engine; a node is `down` only after several misses in a row (one miss is not death),
and `ready` again when a down node answers."""

from __future__ import annotations

import threading
import time

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from control_plane.drivers import EngineUnreachable
from control_plane.fleet import Fleet
from control_plane.models import Event, Node, NodeState
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
                else:
                    node.missed_heartbeats += 1
                    down = node.missed_heartbeats >= self.settings.node_grace_heartbeats
                    if down and node.state != NodeState.down:
                        node.state = NodeState.down
                        message = f"no answer to {node.missed_heartbeats} heartbeats"
                        session.add(Event(kind="node.down", node=node.name, message=message))
                        log.warning("node.down", node=node.name, missed=node.missed_heartbeats)
                session.add(node)
            session.commit()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.beat()
            except Exception as exc:
                log.warning("health.beat_failed", error=str(exc))
