"""The fence: one writer per agent (DESIGN invariant 1). Every rule that keeps a second incarnation from writing
is enforced here, and only here:

- `advance_current`: CURRENT names the one generation allowed to run; it only ever moves forward, and it moves
  before that generation starts (a zombie sees another generation in CURRENT and stops itself);
- `retreat_current`: the one step back, when a move rolls back before its new generation ever served;
- `stopped_before_start`: a new generation of an agent starts only once the old one is no longer placed;
- `fence_out`: an incarnation's scoped key is revoked, so a zombie cannot write even to its own dead path.
"""

from __future__ import annotations

from collections.abc import Callable

from control_plane.db.models import PLACED_STATES, Agent
from control_plane.errors import OperationFailed
from control_plane.storage.ports import CredentialStore, ReplicaStore
from control_plane.storage.replicas import Current, CurrentMoved


def advance_current(storage: ReplicaStore, tenant: str, ordinal: int, generation: int) -> None:
    """Make CURRENT name `generation`. Re-running is safe: when CURRENT already names it, nothing is written; a
    CURRENT past it fails the operation (a newer generation owns the agent)."""

    def refusal(current: Current | None) -> str | None:
        if current is not None and current.generation > generation:
            return f"CURRENT of {tenant}/{ordinal} is {current.generation}, past {generation}"
        return None

    _move_current(storage, tenant, ordinal, generation, refusal)


def retreat_current(storage: ReplicaStore, tenant: str, ordinal: int, abandoned: int, generation: int) -> None:
    """Give CURRENT back to `generation` from `abandoned` (its successor, which a failed move started but never
    routed to, and whose container and key are gone first: see `Fleet.reinstate`). Only that one step back is
    allowed: a CURRENT already at `generation` is left alone, one past `abandoned` fails the operation. The write
    is conditional, so a generation that moves CURRENT meanwhile wins. Re-running is safe for those reasons."""

    def refusal(current: Current | None) -> str | None:
        if current is None or current.generation != abandoned:
            named = None if current is None else current.generation
            return f"CURRENT of {tenant}/{ordinal} is {named}: cannot give it back to {generation}"
        return None

    _move_current(storage, tenant, ordinal, generation, refusal)


def _move_current(
    storage: ReplicaStore,
    tenant: str,
    ordinal: int,
    generation: int,
    refusal: Callable[[Current | None], str | None],
) -> None:
    """Read CURRENT; done when it names `generation`; else fail with `refusal(current)` when that says why not;
    else write it conditionally on what was read, and read again when another writer won (5 times at most)."""
    for _ in range(5):
        current = storage.read_current(tenant, ordinal)
        if current is not None and current.generation == generation:
            return
        refused = refusal(current)
        if refused is not None:
            raise OperationFailed(refused)
        try:
            storage.advance_current(tenant, ordinal, generation, current)
            return
        except CurrentMoved:
            continue
    raise OperationFailed(f"CURRENT of {tenant}/{ordinal} keeps moving")


def stopped_before_start(agent: Agent, generation: int) -> None:
    """Refuse to start `generation` while another generation of the agent is still placed on a node."""
    if agent.state in PLACED_STATES and agent.generation != generation and agent.node is not None:
        raise OperationFailed(f"agent {agent.id} is {agent.state.value} as gen {agent.generation}; stop it first")


def fence_out(credentials: CredentialStore, tenant: str, ordinal: int, generation: int) -> None:
    """Revoke the incarnation's key. Safe to re-run: a revoked key is revoked again as a no-op."""
    credentials.revoke_incarnation(tenant, ordinal, generation)
