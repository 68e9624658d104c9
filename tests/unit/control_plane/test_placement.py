"""Placement: capacity-aware, spreads a tenant's agents, never onto a node that is not ready, says why."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.db.models import Node, NodeState
from control_plane.fleet.placement import NoCapacity, NodeLoad, choose_node


def node(name: str, state: NodeState = NodeState.ready, agents: int = 10, memory: int = 4096) -> Node:
    return Node(name=name, engine_url="unix:///x", state=state, capacity_agents=agents, capacity_memory_mb=memory)


def test_spreads_a_tenants_agents_before_packing() -> None:
    loads = [NodeLoad(node("a"), 5, 1280, 1), NodeLoad(node("b"), 6, 1536, 0)]
    assert choose_node(loads, "acme", 256).name == "b"  # fewer of acme's agents wins over fewer agents overall


def test_then_prefers_the_most_free_memory() -> None:
    loads = [NodeLoad(node("a"), 1, 3000, 0), NodeLoad(node("b"), 4, 1000, 0)]
    assert choose_node(loads, "acme", 256).name == "b"


def test_never_places_on_cordoned_draining_down_or_full_nodes_and_says_why() -> None:
    loads = [
        NodeLoad(node("a", NodeState.cordoned), 0, 0, 0),
        NodeLoad(node("b", NodeState.draining), 0, 0, 0),
        NodeLoad(node("c", NodeState.down), 0, 0, 0),
        NodeLoad(node("d", agents=2), 2, 512, 0),
        NodeLoad(node("e", memory=512), 1, 400, 0),
    ]
    with pytest.raises(NoCapacity) as refused:
        choose_node(loads, "acme", 256)
    message = str(refused.value)
    for reason in ("a: cordoned", "b: draining", "c: down", "d: full (2/2 agents)", "e: 112 MiB free, needs 256"):
        assert reason in message


def test_no_nodes_at_all() -> None:
    with pytest.raises(NoCapacity, match="no nodes registered"):
        choose_node([], "acme", 256)


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 5000), st.sampled_from(list(NodeState))), max_size=6))
def test_a_chosen_node_is_ready_and_has_room(specs: list[tuple[int, int, NodeState]]) -> None:
    loads = [NodeLoad(node(f"n{i}", state), agents, memory, 0) for i, (agents, memory, state) in enumerate(specs)]
    try:
        chosen = choose_node(loads, "acme", 256)
    except NoCapacity:
        assert not any(
            load.node.state == NodeState.ready and load.agents < 10 and load.memory_mb + 256 <= 4096 for load in loads
        )
        return
    load = next(load for load in loads if load.node.name == chosen.name)
    assert chosen.state == NodeState.ready and load.agents < 10 and load.memory_mb + 256 <= 4096
