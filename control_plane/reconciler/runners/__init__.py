"""One runner per operation kind, each written to be re-run from the top after a crash (see each module)."""

from __future__ import annotations

from collections.abc import Callable

from control_plane.db.models import OperationKind
from control_plane.fleet.incarnations import Fleet
from control_plane.reconciler.context import OpContext, Runner
from control_plane.reconciler.runners.cleanup import run_cleanup
from control_plane.reconciler.runners.delete import run_delete
from control_plane.reconciler.runners.failover import run_failover
from control_plane.reconciler.runners.move import run_drain, run_evacuate
from control_plane.reconciler.runners.scale import run_scale

_BY_KIND: dict[OperationKind, Callable[[Fleet, OpContext], None]] = {
    OperationKind.provision: run_scale,
    OperationKind.scale: run_scale,
    OperationKind.hibernate: run_scale,
    OperationKind.wake: run_scale,
    OperationKind.evacuate: run_evacuate,
    OperationKind.drain: run_drain,
    OperationKind.failover: run_failover,
    OperationKind.delete: run_delete,
    OperationKind.cleanup: run_cleanup,
}


def runners(fleet: Fleet) -> dict[OperationKind, Runner]:
    """The runner of each operation kind, bound to `fleet`."""

    def bind(run: Callable[[Fleet, OpContext], None]) -> Runner:
        return lambda ctx: run(fleet, ctx)

    return {kind: bind(run) for kind, run in _BY_KIND.items()}


__all__ = ["runners"]
