"""A stand-in for the observer in unit tests: copies are dicts, answers are the observer's own typed results."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

from control_plane.db.models import Agent, AgentState, Tenant, TenantState
from control_plane.observer import (
    AgentRef,
    AgentWorkflow,
    CopyKind,
    FollowState,
    Freshness,
    NoStateAt,
    ProblemReport,
    ReplicaNotFound,
    Source,
    WorkflowDetail,
    WorkflowError,
    WorkflowInfo,
    WorkflowList,
    WorkflowNotInCopy,
)

T0 = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)


def info(workflow_id: str, status: str = "SUCCESS", result: object = 1, error: str | None = None) -> WorkflowInfo:
    return WorkflowInfo(
        id=workflow_id,
        name="count",
        status=status,
        created_at=T0,
        updated_at=T0,
        result_json=json.dumps(result),
        error=WorkflowError("ValueError", error) if error else None,
        blocked_reason=None,
        parent_id=None,
        queue=None,
        bundle_version="1",
        forked_from=None,
        inputs_json=json.dumps({"args": [3], "kwargs": {}}),
    )


@dataclass
class FakeObserver:
    """`copies[(tenant, agent)]`: (generation, workflows) of the newest state; `history[(tenant, agent)]`: a list of
    (since, generation, workflows) a point-in-time query picks from."""

    copies: dict[tuple[str, int], tuple[int, list[WorkflowInfo]]] = field(default_factory=dict)
    history: dict[tuple[str, int], list[tuple[dt.datetime, int, list[WorkflowInfo]]]] = field(default_factory=dict)
    follows: dict[AgentRef, CopyKind] = field(default_factory=dict)

    def _source(self, tenant: str, agent: int, generation: int, kind: CopyKind, at: dt.datetime | None) -> Source:
        freshness = Freshness(txid=42, applied_at=T0, as_of=at, replica_txid=42, seconds_behind=0.0, checked_at=T0)
        return Source(AgentRef(tenant, agent, generation), kind, freshness, 1)

    def _state(self, tenant: str, agent: int, at: dt.datetime | None) -> tuple[int, list[WorkflowInfo], CopyKind]:
        if at is not None:
            points = [p for p in self.history.get((tenant, agent), []) if p[0] <= at]
            if not points:
                raise NoStateAt(f"{tenant}/{agent} has no replica from before {at.isoformat()}")
            return points[-1][1], points[-1][2], CopyKind.snapshot
        if (tenant, agent) not in self.copies:
            raise ReplicaNotFound(f"no replica for {tenant}/{agent}")
        generation, rows = self.copies[(tenant, agent)]
        followed = self.follows.get(AgentRef(tenant, agent, generation), CopyKind.snapshot)
        return generation, rows, followed

    def agents(self, tenant: str) -> list[int]:
        return sorted({a for t, a in [*self.copies, *self.history] if t == tenant})

    def workflows(
        self,
        tenant: str,
        agent: int,
        generation: int | None = None,
        *,
        at: dt.datetime | None = None,
        status: str | Iterable[str] | None = None,
        limit: int = 100,
        **_: object,
    ) -> WorkflowList:
        gen, rows, kind = self._state(tenant, agent, at)
        wanted = {status} if isinstance(status, str) else set(status or ())
        listed = [r for r in rows if not wanted or r.status in wanted][:limit]
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return WorkflowList(self._source(tenant, agent, gen, kind, at), listed, counts)

    def workflow(
        self, tenant: str, agent: int, workflow_id: str, generation: int | None = None, *, at: dt.datetime | None = None
    ) -> WorkflowDetail:
        gen, rows, kind = self._state(tenant, agent, at)
        for row in rows:
            if row.id == workflow_id:
                return WorkflowDetail(self._source(tenant, agent, gen, kind, at), row, [], [], [])
        raise WorkflowNotInCopy(f"no workflow {workflow_id!r} in {tenant}/{agent}")

    def find_workflow(
        self, tenant: str, workflow_id: str, agents: Iterable[int] | None = None
    ) -> WorkflowDetail | None:
        for agent in sorted(agents) if agents is not None else self.agents(tenant):
            try:
                return self.workflow(tenant, agent, workflow_id)
            except (WorkflowNotInCopy, ReplicaNotFound):
                continue
        return None

    def problems(self, statuses: Iterable[str] = ("ERROR", "BLOCKED"), limit_per_agent: int = 100) -> ProblemReport:
        found = [
            AgentWorkflow(self._source(t, a, gen, CopyKind.follow, None), row)
            for (t, a), (gen, rows) in sorted(self.copies.items())
            for row in rows
            if row.status in set(statuses)
        ]
        return ProblemReport(found, [], len(self.copies))

    def follow(self, tenant: str, agent: int, generation: int) -> FollowState:
        ref = AgentRef(tenant, agent, generation)
        for older in [r for r in self.follows if (r.tenant, r.agent) == (tenant, agent) and r != ref]:
            del self.follows[older]
        self.follows.setdefault(ref, CopyKind.follow)
        return self._follow_state(ref)

    def unfollow(self, tenant: str, agent: int, generation: int | None = None) -> int:
        refs = [
            r for r in self.follows if (r.tenant, r.agent) == (tenant, agent) and generation in (None, r.generation)
        ]
        for ref in refs:
            del self.follows[ref]
        return len(refs)

    def follow_state(self, tenant: str, agent: int, generation: int) -> FollowState | None:
        ref = AgentRef(tenant, agent, generation)
        return self._follow_state(ref) if ref in self.follows else None

    def followed(self) -> list[FollowState]:
        return [self._follow_state(ref) for ref in sorted(self.follows)]

    def _follow_state(self, ref: AgentRef) -> FollowState:
        return FollowState(ref, self.follows[ref], None, True, 42, T0, T0, None, 0, None)


def add_tenant(
    engine: Engine, name: str, agents: dict[int, tuple[AgentState, int]], *, hibernated: bool = False
) -> None:
    """A tenant row and its agent rows: ordinal -> (state, generation)."""
    with Session(engine) as session:
        running = sum(1 for state, _ in agents.values() if state is AgentState.running)
        state = TenantState.hibernated if hibernated else TenantState.active
        session.add(Tenant(name=name, agents=running, state=state))
        for ordinal, (agent_state, generation) in agents.items():
            session.add(
                Agent(
                    id=f"{name}/{ordinal}",
                    tenant=name,
                    ordinal=ordinal,
                    generation=generation,
                    state=agent_state,
                    node="n1",
                    url=f"http://agent-{name}-{ordinal}.invalid" if agent_state is AgentState.running else None,
                )
            )
        session.commit()
