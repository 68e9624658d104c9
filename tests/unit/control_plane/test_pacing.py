"""Moves are paced per destination node (reconciler/pacing.py): a node takes more moves at once only while they
finish about as fast as one alone, and fewer as soon as they slow down; a move waiting for a slot stops nothing."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from control_plane.reconciler.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def move(pacer: Pacer, clock: Clock, node: str, seconds: float, ceiling: int = 4, *, at_once: int = 1) -> None:
    """`at_once` cutovers on `node`, begun together, each taking `seconds`."""
    with contextlib.ExitStack() as running:
        for _ in range(at_once):
            running.enter_context(pacer.slot(node, ceiling))
        clock.now += seconds


def test_slots_grow_while_moves_stay_fast_and_halve_when_they_slow_down() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock)
    assert pacer.slots("n1") == 1  # a node nothing is known of takes one move at a time
    move(pacer, clock, "n1", 2.0)
    assert pacer.slots("n1") == 2
    move(pacer, clock, "n1", 2.4, at_once=2)  # within 1.25x the best (2.0), with both slots taken
    assert pacer.slots("n1") == 3, "one slot more per round that filled them, not one per fast cutover"
    move(pacer, clock, "n1", 2.3, at_once=3)
    assert pacer.slots("n1") == 4
    move(pacer, clock, "n1", 2.2, at_once=4)
    assert pacer.slots("n1") == 4, "never above the ceiling (move_parallelism)"
    move(pacer, clock, "n1", 2.9, at_once=4)  # slower, not yet 1.5x the best: kept
    assert pacer.slots("n1") == 4
    move(pacer, clock, "n1", 3.1)  # contended (past 1.5x: what a drain may cost a tenant's downtime): halved
    assert pacer.slots("n1") == 2
    move(pacer, clock, "n1", 9.0)
    move(pacer, clock, "n1", 9.0)
    assert pacer.slots("n1") == 1, "never below one"
    assert pacer.slots("n2") == 1, "each node learns for itself"


def test_a_move_that_ran_alone_never_adds_a_second_slot_beside_it() -> None:
    """RFC 7661's rule: a fast cutover grows the node's slots only when it ran with all of them taken. A drain's
    cutovers that each ran alone (the next followers still catching up) said nothing about two at once."""
    clock = Clock()
    pacer = Pacer(clock=clock)
    move(pacer, clock, "n1", 0.8)
    assert pacer.slots("n1") == 2
    for _ in range(3):
        move(pacer, clock, "n1", 0.8)
    assert pacer.slots("n1") == 2, "cutovers alone while two were allowed"
    move(pacer, clock, "n1", 0.9, at_once=2)
    assert pacer.slots("n1") == 3
    move(pacer, clock, "n1", 2.0, at_once=3)  # three at once on a 2-vCPU node: 2.5x one alone
    assert pacer.slots("n1") == 1


def test_a_failed_move_teaches_nothing() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock)
    try:
        with pacer.slot("n1", 4):
            clock.now += 0.01  # a move that failed at once is no measure of the node
            raise RuntimeError("engine went away")
    except RuntimeError:
        pass
    assert pacer.slots("n1") == 1
    move(pacer, clock, "n1", 2.0)
    assert pacer.slots("n1") == 2


def test_concurrent_moves_never_run_more_on_a_node_than_its_slots() -> None:
    pacer = Pacer()
    lock = threading.Lock()
    running: dict[str, int] = {"n1": 0, "n2": 0}
    peaks: dict[str, list[tuple[int, int]]] = {"n1": [], "n2": []}

    def one(agent_id: str) -> None:
        node = "n1" if int(agent_id.split("/")[1]) % 2 else "n2"
        with pacer.slot(node, 4):
            cutover(node)

    def cutover(node: str) -> None:
        with lock:
            running[node] += 1
            peaks[node].append((running[node], pacer.slots(node)))
        time.sleep(0.05 if node == "n1" else 0.05 * running[node] ** 2)  # n2 slows down under load
        with lock:
            running[node] -= 1

    with ThreadPoolExecutor(max_workers=4) as pool:  # as the operation's move threads (move_parallelism 4)
        list(pool.map(one, sorted(f"t{i}/{i}" for i in range(16))))
    # n1's slots only grow, so every move there began within them (n2's may shrink under a running move)
    assert all(count <= slots for count, slots in peaks["n1"]), peaks["n1"]
    assert peaks["n1"][0][0] == 1 and peaks["n2"][0][0] == 1, "a node starts with one move at a time"
    assert max(count for count, _ in peaks["n1"]) >= 2, "a node whose moves stay fast gets more at once"
    assert pacer.slots("n2") < pacer.slots("n1"), "a node whose moves slow down under load gets fewer"


def test_one_fast_outlier_does_not_hold_a_node_at_one_slot_for_good() -> None:
    """The best drifts towards cutovers run alone: after one tiny move (0.2 s), moves of 0.5 s first read as slow
    (halved to one slot), then, as the best follows them, as the node's normal pace (a second slot again)."""
    clock = Clock()
    pacer = Pacer(clock=clock)
    move(pacer, clock, "n1", 0.2)
    move(pacer, clock, "n1", 0.5)
    assert pacer.slots("n1") == 1  # 2.5x the best: halved
    for _ in range(5):
        move(pacer, clock, "n1", 0.5)
    assert pacer.slots("n1") == 2, "the best followed the node's time alone"
    move(pacer, clock, "n1", 1.5, at_once=2)  # and two at once that take 3x still halve
    assert pacer.slots("n1") == 1
