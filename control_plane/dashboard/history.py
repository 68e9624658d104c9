"""Replication lag over time, per agent (the store-side measurement): a small ring buffer in memory, fed from the
agents' rows each time a page or a stream reads them (a new sample only when the health monitor probed again).
Lost on restart; it is a picture of the last minutes, not a record."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from control_plane.db.models import AgentPublic, AgentState


@dataclass(frozen=True)
class LagSample:
    at: float  # when the agent was probed
    lag_txids: int | None  # store-side: txids the agent reported that the replica does not list
    lag_seconds: float | None  # store-side: seconds since the last sync the store confirmed


class LagHistory:
    def __init__(self, keep: int = 120) -> None:
        self.keep = keep
        self._samples: dict[str, deque[LagSample]] = {}
        self._lock = threading.Lock()

    def record(self, agents: Iterable[AgentPublic]) -> None:
        with self._lock:
            for agent in agents:
                if agent.state != AgentState.running or agent.probed_at is None:
                    continue
                if agent.lag_txids is None and agent.lag_seconds is None:
                    continue
                key = f"{agent.tenant}/{agent.ordinal}"
                samples = self._samples.setdefault(key, deque(maxlen=self.keep))
                if samples and samples[-1].at >= agent.probed_at:
                    continue
                samples.append(LagSample(agent.probed_at, agent.lag_txids, agent.lag_seconds))

    def series(self, prefix: str = "") -> dict[str, list[LagSample]]:
        with self._lock:
            return {key: list(samples) for key, samples in sorted(self._samples.items()) if key.startswith(prefix)}

    def growing(self, points: int = 4) -> list[str]:
        """Agents whose lag (txids) rose at each of their last `points` samples: replication falls behind."""
        found = []
        for key, samples in self.series().items():
            tail = [sample.lag_txids for sample in samples[-points:] if sample.lag_txids is not None]
            if len(tail) == points and all(a < b for a, b in itertools.pairwise(tail)):
                found.append(key)
        return found
