"""The stuck-state detector: no agent stays `starting` or `stopping` past a deadline with nothing working on it.

Those states are held only while an operation of the agent's tenant runs; a control plane killed at the wrong
moment, or a failure path that forgot to settle the row, leaves one behind and the tenant partly down for good
(the issue-11 operator saw `agent ft1/0 is stopping as gen 8` block every later scale). Once per `interval` the
reconciler looks for agents in those states, last changed more than `stuck_after` ago, whose tenant has no
unfinished operation:

- the first time: **repair** — a `scale` to the tenant's own count (`repair: true`), which starts the agent again
  in place, same generation and volume (`planning.plan_start`), or retires it properly past the count; event
  `agent.stuck`;
- when it is stuck again after a repair (an `agent.stuck` event for it within 3 x `stuck_after`): **escalate** —
  the agent is marked `failed` (a later operation starts it in place first) and event `agent.stuck_escalated`
  says a person must look; nothing is queued again, so a hopeless repair does not loop.

A sweep writes in one short transaction; running it again at any time is harmless: a tenant with a queued repair
is busy, so it is not queued twice."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from control_plane.db.models import UNFINISHED_STATES, Agent, AgentState, Event, Operation, Tenant
from control_plane.reconciler.health import repair_operation

log = structlog.get_logger("control_plane.reconciler.stuck")

TRANSIENT = (AgentState.starting, AgentState.stopping)


@dataclass(frozen=True)
class Finding:
    agent: str
    state: str
    action: str  # "repair" or "escalate"


def sweep(engine: Engine, stuck_after: float, now: float | None = None) -> list[Finding]:
    """One look at the fleet: repair or escalate every stuck agent (see the module's docstring)."""
    now = time.time() if now is None else now
    findings: list[Finding] = []
    with Session(engine) as session:
        stuck = session.exec(
            select(Agent).where(col(Agent.state).in_(TRANSIENT)).where(col(Agent.updated_at) < now - stuck_after)
        ).all()
        busy = {
            op.tenant
            for op in session.exec(select(Operation).where(col(Operation.state).in_(UNFINISHED_STATES))).all()
            if op.tenant is not None
        }
        repaired: set[str] = set()
        for agent in sorted(stuck, key=lambda a: a.id):
            if agent.tenant in busy:
                continue  # its tenant's operation holds the state (or will settle it)
            since = round(now - agent.updated_at)
            what = f"{agent.id} has been {agent.state.value} as gen {agent.generation} for {since}s"
            if _repaired_recently(session, agent, now - 3 * stuck_after):
                session.add(
                    Event(
                        kind="agent.stuck_escalated",
                        tenant=agent.tenant,
                        node=agent.node,
                        agent=agent.ordinal,
                        message=f"{what} after a repair: marked failed; needs a person",
                    )
                )
                agent.state, agent.url, agent.updated_at = AgentState.failed, None, now
                session.add(agent)
                findings.append(Finding(agent.id, "failed", "escalate"))
                log.error("agent.stuck_escalated", agent=agent.id, seconds=since)
                continue
            tenant = session.get(Tenant, agent.tenant)
            op_id: str | None = None
            if tenant is not None and agent.tenant not in repaired:
                op = repair_operation(tenant, stuck=agent.id)
                session.add(op)
                op_id = op.id
                repaired.add(agent.tenant)
            session.add(
                Event(
                    kind="agent.stuck",
                    tenant=agent.tenant,
                    node=agent.node,
                    agent=agent.ordinal,
                    operation=op_id,
                    message=f"{what} with no operation working on it: repairing (scale to the tenant's count)",
                )
            )
            findings.append(Finding(agent.id, agent.state.value, "repair"))
            log.warning("agent.stuck", agent=agent.id, state=agent.state.value, seconds=since, op=op_id)
        session.commit()
    return findings


def _repaired_recently(session: Session, agent: Agent, after: float) -> bool:
    found = session.exec(
        select(Event)
        .where(Event.kind == "agent.stuck")
        .where(Event.tenant == agent.tenant)
        .where(Event.agent == agent.ordinal)
        .where(col(Event.at) > after)
    ).first()
    return found is not None
