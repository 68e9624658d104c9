"""The warm pool's refill: every `warm_pool_interval`, each ready node's pool is brought back to `warm_pool_size`
(`fleet/pool.py`), under a lease on the node's row so that of several control planes one refills a node at a time.

One node's refill is three small transitions: `claim_node` (stamp a fresh lock token, if the node's pool lease is
free or ran out), the refill itself (no session held: engine calls take seconds), `finish_node` (write what it saw
and release the lease, only while the token is still ours). A control plane killed in the middle leaves a lease
that runs out; the next refill counts the engine's containers afresh, so nothing is started twice for long."""

from __future__ import annotations

import secrets
import time
from typing import cast

import structlog
from sqlalchemy import or_, update
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, select

from control_plane.db.models import Agent, AgentState, Node, NodeState
from control_plane.drivers.base import EngineUnreachable
from control_plane.fleet import pool
from control_plane.fleet.incarnations import Fleet
from control_plane.timing import Periodic

log = structlog.get_logger("control_plane.reconciler.pool")


def claim_node(engine: Engine, name: str, lease: float) -> str | None:
    """A fresh lock token on `name`'s pool, or None when another control plane holds a live lease on it."""
    token, now = secrets.token_hex(16), time.time()
    with Session(engine) as session:
        result = cast(
            CursorResult[tuple[()]],
            session.execute(
                update(Node)
                .where(col(Node.name) == name)
                .where(or_(col(Node.pool_locked_until).is_(None), col(Node.pool_locked_until) < now))
                .values(pool_lock_token=token, pool_locked_until=now + lease)
            ),
        )
        session.commit()
    return token if result.rowcount == 1 else None


def finish_node(engine: Engine, name: str, token: str, *, size: int, ready: int, memory_mb: int) -> bool:
    """Record what the refill saw and release the lease, only if `token` is still ours. Safe to call twice: the
    second call finds the token cleared and changes nothing."""
    with Session(engine) as session:
        result = cast(
            CursorResult[tuple[()]],
            session.execute(
                update(Node)
                .where(col(Node.name) == name, col(Node.pool_lock_token) == token)
                .values(
                    pool_size=size,
                    pool_ready=ready,
                    pool_memory_mb=memory_mb,
                    pool_lock_token=None,
                    pool_locked_until=None,
                )
            ),
        )
        session.commit()
    return result.rowcount == 1


class PoolRefiller:
    """Refills every ready node's pool, one node after another, each under its lease (see the module docstring)."""

    def __init__(self, fleet: Fleet, *, lease: float = 120.0) -> None:
        self.fleet, self.lease = fleet, lease
        self._periodic = Periodic("litefleet-pool", fleet.settings.warm_pool_interval, self.tick, first_at_once=True)

    def start(self) -> PoolRefiller:
        self._periodic.start()
        return self

    def stop(self) -> None:
        self._periodic.stop()

    def tick(self) -> None:
        """One round over the nodes. Re-running is harmless: each node's refill counts what its engine has."""
        query = select(Node).where(col(Node.state) == NodeState.ready)
        if not self.fleet.settings.warm_pool_size:  # no pool wanted: empty only the pools a refill left behind
            query = query.where(or_(col(Node.pool_size) > 0, col(Node.pool_ready) > 0))
        with Session(self.fleet.engine) as session:
            nodes = list(session.exec(query))
            # a pool container's start takes CPU from an agent starting on the same node (a claim's is what the
            # pool is for): refill such a node in a later round, once its agents are up
            busy = set(session.exec(select(Agent.node).where(col(Agent.state) == AgentState.starting)))
        for node in nodes:
            if node.name not in busy:
                self.refill(node)

    def refill(self, node: Node) -> int | None:
        """Refill one node's pool; its ready count, or None when another control plane holds it or it failed."""
        settings = self.fleet.settings
        token = claim_node(self.fleet.engine, node.name, self.lease)
        if token is None:
            return None
        ready: int | None = None
        try:
            ready = pool.refill(self.fleet.driver(node), settings, self.fleet.storage.bucket, node.address)
        except EngineUnreachable:
            log.info("pool.node_unreachable", node=node.name)
        except Exception:  # one node's failure (an image copy, a start the engine refused) is logged, not fatal
            log.exception("pool.refill_failed", node=node.name)
        size = settings.warm_pool_size
        finish_node(
            self.fleet.engine,
            node.name,
            token,
            size=size,
            ready=0 if ready is None else ready,
            memory_mb=settings.warm_pool_memory_mb,
        )
        return ready
