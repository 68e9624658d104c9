"""The reconciler: operation rows claimed with a lease (`claims`), run by workers (`worker`) through the runner of
their kind (`runners/`), each seeing an `OpContext` (`context`); the health monitor (`health`) queues the work."""

from control_plane.reconciler.claims import LostLease, claim, claim_batch, finish
from control_plane.reconciler.context import OpContext, Runner
from control_plane.reconciler.worker import Reconciler

__all__ = ["LostLease", "OpContext", "Reconciler", "Runner", "claim", "claim_batch", "finish"]
