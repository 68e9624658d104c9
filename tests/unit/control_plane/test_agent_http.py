"""What an agent answers is untrusted: a hostile /readyz can never become a number the fleet DB cannot hold."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.drivers.agent_http import MAX_TXID, Readiness

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize(
    "body",
    [
        [],
        "ready",
        {"replication": []},
        {
            "replication": {
                "local_txid": 2**80,
                "replica_txid": -1,
                "lag_txids": "12",
                "seconds_since_sync": 1e300,
                "unconfirmed_commits": -3,
            }
        },
        {"replication": {"local_txid": True, "replica_txid": 1.5, "seconds_since_sync": float("nan")}},
    ],
)
def test_hostile_readyz_answers_become_no_numbers(body: Any) -> None:
    readiness = Readiness.parse(200, body)
    assert (readiness.local_txid, readiness.replica_txid, readiness.lag_txids) == (None, None, None)
    assert readiness.seconds_since_sync is None and readiness.unconfirmed_commits is None


@given(st.integers(min_value=0, max_value=599), JSON)
def test_any_json_parses_into_bounded_numbers(status: int, body: Any) -> None:
    readiness = Readiness.parse(status, {"replication": body} if isinstance(body, dict) else body)
    for txid in (readiness.local_txid, readiness.replica_txid, readiness.lag_txids, readiness.unconfirmed_commits):
        assert txid is None or 0 <= txid <= MAX_TXID
    seconds = readiness.seconds_since_sync
    assert seconds is None or 0 <= seconds < 3.2e8
    assert readiness.ready is (status == 200)
