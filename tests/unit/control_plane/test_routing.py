"""The router's agent URLs: an id or a name is one path segment, whatever it holds (issue 10)."""

from __future__ import annotations

import httpx
import pytest

from control_plane.services.routing import _segment


@pytest.mark.parametrize(
    "value", ["../../v1/workflows?limit=1000&", "..", ".", "a/b", "x#frag", "w 1", "%2e%2e", "ünï", "id?x=1"]
)
def test_an_id_stays_one_segment_of_the_workflow_route(value: str) -> None:
    url = httpx.URL(f"http://agent:8080/v1/workflows/{_segment(value)}")
    assert url.path == "/v1/workflows/" + _segment(value) or url.raw_path.count(b"/") == 3
    assert url.raw_path.count(b"/") == 3 and url.query == b"" and url.fragment == ""
    assert not url.raw_path.endswith((b"/..", b"/."))
