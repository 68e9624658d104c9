"""The research agent against a real HTTP tool server on 127.0.0.1 whose summariser fails on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_image import Runtime
from tenants import research_agent
from tenants.research_agent.stub_tools import StubTools as ToolServer


@pytest.fixture
def tools() -> Iterator[ToolServer]:
    server = ToolServer(summarise_failures=3)
    yield server
    server.close()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(str(tmp_path / "research.db"), research_agent)
    runtime.recover()
    yield runtime
    runtime.close(timeout=5)


def test_approved_research_is_published_after_flaky_tool_retries(runtime: Runtime, tools: ToolServer) -> None:
    handle = runtime.start(research_agent.research, ("solar", tools.url), {"cool_down": 0.1}, id="r1")
    assert runtime.get_event("r1", "draft", timeout=10) == {"summary": "solar: 6 findings", "findings": 6}
    runtime.send("r1", {"approved": True, "by": "dana"}, "approval")
    result = handle.result(10)
    assert result == {
        "topic": "solar",
        "status": "published",
        "by": "dana",
        "url": "https://reports.example/r1",
        "summary": "solar: 6 findings",
    }
    assert tools.calls == {"search": 3, "summarise": 4, "publish": 1}
    summarise = next(s for s in runtime.steps("r1") if s.name == "summarise")
    assert summarise.attempts == 4


def test_rejection_and_timeout(runtime: Runtime, tools: ToolServer) -> None:
    rejected = runtime.start(research_agent.research, ("wind", tools.url), id="r2")
    runtime.get_event("r2", "draft", timeout=10)
    runtime.send("r2", {"approved": False, "by": "sam"}, "approval")
    assert rejected.result(10)["status"] == "rejected"
    timed_out = runtime.start(research_agent.research, ("tides", tools.url), {"approval_timeout": 0.2})
    assert timed_out.result(10) == {"topic": "tides", "status": "rejected", "by": None, "summary": "tides: 6 findings"}
    assert tools.calls.get("publish") is None


def test_restart_mid_approval_never_calls_tools_again(tmp_path: Path, tools: ToolServer) -> None:
    first = Runtime(str(tmp_path / "r.db"), research_agent)
    first.recover()
    first.start(research_agent.research, ("geo", tools.url), {"cool_down": 0.1}, id="r3")
    first.get_event("r3", "draft", timeout=10)
    first.close()
    calls_before = dict(tools.calls)
    second = Runtime(str(tmp_path / "r.db"), research_agent)
    second.recover()
    try:
        second.send("r3", {"approved": True, "by": "kim"}, "approval")
        assert second.wait("r3", 10).result["status"] == "published"
        assert tools.calls == calls_before | {"publish": 1}
    finally:
        second.close()
