"""Which agents the observer follows: those the fleet DB says are placed (starting, running, stopping), at the
generation it names. Matched again every `observer_sync_interval`, so followers come back after a control-plane
restart and go away when an agent is retired, hibernated or purged, with no call from the reconciler."""

from __future__ import annotations

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import PLACED_STATES, Agent
from control_plane.observer.facade import Observer
from control_plane.observer.models import AgentRef, ObserverError

log = structlog.get_logger("control_plane.observer")


def placed_agents(engine: Engine) -> set[AgentRef]:
    """Every placed agent's (tenant, ordinal, generation) in the fleet DB."""
    with Session(engine) as session:
        rows = session.exec(
            select(Agent.tenant, Agent.ordinal, Agent.generation)
            .where(col(Agent.state).in_(PLACED_STATES))
            .where(Agent.generation > 0)
        ).all()
    return {AgentRef(tenant, ordinal, generation) for tenant, ordinal, generation in rows}


def sync_followers(observer: Observer, engine: Engine) -> tuple[int, int]:
    """Follow every placed agent's generation, unfollow every other. Returns (followed, unfollowed) in this pass.
    Safe to run at any time and as often as wanted: following a followed agent or unfollowing one that is not
    followed changes nothing."""
    wanted = placed_agents(engine)
    have = {state.ref for state in observer.followed()}
    gone = 0
    for ref in sorted(have - wanted):
        gone += observer.unfollow(ref.tenant, ref.agent, ref.generation)
    added = 0
    for ref in sorted(wanted - have):
        try:
            observer.follow(ref.tenant, ref.agent, ref.generation)
            added += 1
        except (ObserverError, ValueError, OSError) as exc:
            log.warning("observer.follow_failed", tenant=ref.tenant, agent=ref.agent, error=str(exc))
    if added or gone:
        log.info("observer.synced", followed=added, unfollowed=gone, total=len(wanted))
    return added, gone
