"""An agent-style bundle: plan, call tools over HTTP (one of them flaky), ask a human, wait, then report.

The tool server's base URL is an argument, so the same bundle works against a real service or a test stub:

    POST /v1/workflows/research {"args": ["solar panels", "http://tools.internal:8000"]}
    POST /v1/workflows/<id>/messages/approval {"approved": true, "by": "dana"}

Every tool call is a step: after a crash the agent never re-asks a tool it already has an answer from, and the
human is never asked twice.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from agent_image import Queue, recv, set_event, sleep, step, workflow, workflow_id

__version__ = "1"

TOOLS = Queue("tools", concurrency=4)  # at most 4 research runs talk to the tools at once on one agent


class ToolError(Exception):
    """The tool answered with an error status (retried by the step)."""


def _call_tool(base_url: str, tool: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/{tool}",
        data=json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ToolError(f"{tool} answered {exc.code}") from None


@step
def plan(topic: str) -> list[str]:
    """Split the topic into search queries (deterministic here; an LLM call in a real agent)."""
    return [f"{topic} overview", f"{topic} costs", f"{topic} risks"]


@step(retries=2, backoff=0.2)
def search(base_url: str, query: str) -> list[str]:
    return list(_call_tool(base_url, "search", {"q": query})["results"])


@step(retries=5, backoff=0.1, backoff_rate=2.0, max_backoff=2.0)
def summarise(base_url: str, topic: str, findings: list[str]) -> str:
    """The flaky tool: it fails often, so it gets more retries with exponential backoff."""
    return str(_call_tool(base_url, "summarise", {"topic": topic, "findings": findings})["summary"])


@step
def publish(base_url: str, report: dict[str, Any]) -> str:
    return str(_call_tool(base_url, "publish", report)["url"])


@workflow(queue=TOOLS)
def research(topic: str, tools_url: str, approval_timeout: float = 3600.0, cool_down: float = 1.0) -> dict[str, Any]:
    findings: list[str] = []
    for query in plan(topic):
        findings.extend(search(tools_url, query))
    summary = summarise(tools_url, topic, findings)
    set_event("draft", {"summary": summary, "findings": len(findings)})

    decision = recv("approval", timeout=approval_timeout)
    if not decision or not decision.get("approved"):
        return {"topic": topic, "status": "rejected", "by": (decision or {}).get("by"), "summary": summary}

    sleep(cool_down)  # a durable wait: e.g. an embargo before publishing, survives restarts
    url = publish(tools_url, {"id": workflow_id(), "topic": topic, "summary": summary})
    return {"topic": topic, "status": "published", "by": decision.get("by"), "url": url, "summary": summary}
