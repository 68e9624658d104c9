"""How many moves a node takes at once, learned from how long its moves take (additive increase, multiplicative
decrease, as TCP paces a connection).

A move's downtime is its cutover: the source's stop, then the new incarnation's promotion or start (Python imports,
Litestream's first sync; a full restore when cold): CPU and disk on the destination node. Four cutovers at once on
a 2-vCPU node each take about twice as long as one alone, so a drain's downtime per agent doubled while its total
time barely improved. Each destination node therefore gets a number of cutover slots that starts at one; a cutover
that finishes within `fast` x the node's best adds a slot (up to `ceiling`), one slower than `slow` x the best
halves them. `slow` is 1.5 because that is what a drain may cost a tenant: its downtime per agent within 1.5x a
single move's.

A cutover adds a slot only when it ran with every slot taken (TCP's rule for a window the sender did not fill,
RFC 7661): one that ran alone says nothing about whether the node takes one more at once. Without the rule a
drain's first cutovers, each alone while the next followers still caught up, grew a 2-vCPU node to three slots,
and the next three cutovers took 2.1-2.4 s each against 0.8 s alone.

Only the cutover holds a slot (runners/move.py): a warm move's follower restores and catches up before, beside the
others. A move waiting for a slot has not stopped anything yet: its agent keeps serving, so pacing lengthens a
drain, never a tenant's downtime.

The best a cutover is judged by is the fastest seen, except that each cutover run alone moves it a quarter of the
way towards itself: the node's time alone changes (its load, the databases moved) and one fast outlier must not
keep it at one slot for good.

In memory, per control plane: a restart learns again from one slot (the safe end)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# How far a cutover that ran alone moves the node's best towards itself: one fast outlier (a tiny database, a quiet
# minute) no longer holds the node at one slot for good (test_pacing: five alone at 2.5x it bring a second slot back).
DRIFT = 0.25


@dataclass
class _Node:
    slots: int = 1
    busy: int = 0
    best: float | None = None  # the fastest cutover seen on this node, drifting up with slower ones run alone
    peaks: dict[object, int] = field(default_factory=dict)  # per cutover running: the most that ran at once with it


class Pacer:
    def __init__(self, *, fast: float = 1.25, slow: float = 1.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.fast, self.slow, self._clock = fast, slow, clock
        self._nodes: dict[str, _Node] = {}
        self._changed = threading.Condition()

    def slots(self, node: str) -> int:
        with self._changed:
            return self._nodes.get(node, _Node()).slots

    @contextmanager
    def slot(self, node: str, ceiling: int) -> Iterator[None]:
        """Hold one of `node`'s cutover slots while the block runs (waiting for one first); the block's duration
        then tunes how many the node has."""
        with self._changed:
            state = self._nodes.setdefault(node, _Node())
            while state.busy >= min(state.slots, max(1, ceiling)):
                self._changed.wait()
            state.busy += 1
            hold = object()
            state.peaks[hold] = 0
            for other in state.peaks:
                state.peaks[other] = max(state.peaks[other], state.busy)
        began = self._clock()
        finished = False
        try:
            yield
            finished = True
        finally:
            took = self._clock() - began
            with self._changed:
                state.busy -= 1
                peak = state.peaks.pop(hold)
                if finished:
                    self._learn(state, took, peak, ceiling)
                self._changed.notify_all()

    def _learn(self, state: _Node, took: float, peak: int, ceiling: int) -> None:
        best = took if state.best is None else state.best
        if took <= self.fast * best and peak >= state.slots:
            state.slots = min(max(1, ceiling), state.slots + 1)
        elif took > self.slow * best:
            state.slots = max(1, state.slots // 2)
        if took < best:
            state.best = took
        elif peak == 1:  # alone: what one cutover takes on this node now (after it was judged by the old best)
            state.best = best + DRIFT * (took - best)


PACER = Pacer()  # the control plane's, shared by its operations: they all start agents on the same nodes
