"""One runner per operation kind, each written to be re-run from the top after a crash."""

from control_plane.reconciler.runners.move import runners

__all__ = ["runners"]
