"""`make demo` (runtime part): one real agent server, research workflows, a kill -9 mid-flight, a restart.

Shows that after the crash every workflow finishes, no tool is called twice for an answer already
checkpointed, and the human is asked once. Everything lands under var/demo/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent_image._poll import retry_until
from tenants.research_agent.stub_tools import StubTools

REPO = Path(__file__).resolve().parents[1]
WORKDIR = REPO / "var" / "demo"
TOPICS = ("solar", "wind", "tides")


def _call(port: int, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _start_agent(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent_image", "serve", "--bundle", "tenants.research_agent"]
        + ["--db", str(db), "--port", str(port)],
        cwd=REPO,
        stderr=log.open("a"),
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    try:
        retry_until(lambda: _call(port, "GET", "/readyz"), seconds=30, interval=0.05, errors=(OSError,))
    except OSError:
        raise SystemExit(f"agent did not become ready; see {log}") from None
    return agent


def main() -> None:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    db, log = WORKDIR / "research.db", WORKDIR / "agent.log"
    for stale in WORKDIR.glob("research.db*"):
        stale.unlink()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tools = StubTools(summarise_failures=2)
    print(f"1. agent server on :{port}, tools at {tools.url}, state in {db}")
    agent = _start_agent(db, port, log)
    for topic in TOPICS:
        _call(port, "POST", "/v1/workflows/research", {"id": f"research-{topic}", "args": [topic, tools.url]})
    while not all(_call(port, "GET", f"/v1/workflows/research-{topic}/events/draft")["value"] for topic in TOPICS):
        time.sleep(0.05)
    print(f"2. three research workflows drafted and now wait for approval; tool calls so far: {tools.calls}")

    agent.send_signal(signal.SIGKILL)
    agent.wait()
    calls_at_crash = dict(tools.calls)
    print("3. kill -9 of the agent while all three wait for a human")

    agent = _start_agent(db, port, log)
    print("4. restarted: recovery resumed them from the log")
    for topic in TOPICS:
        decision = {"approved": topic != "tides", "by": "dana"}
        _call(port, "POST", f"/v1/workflows/research-{topic}/messages/approval", decision)
    for topic in TOPICS:
        done = _call(port, "GET", f"/v1/workflows/research-{topic}?wait=30")
        print(f"   research-{topic}: {done['status']} -> {json.dumps(done['result'])}")
    steps = _call(port, "GET", "/v1/workflows/research-solar/steps")["steps"]
    print("5. research-solar's execution log:")
    for step in steps:
        attempts = f" (attempts: {step['attempts']})" if (step["attempts"] or 1) > 1 else ""
        output = json.dumps(step["output"])[:60]
        print(f"   #{step['seq']:<2} {step['kind']:<10} {step['name'] or '':<10} {output}{attempts}")
    repeated = {tool: n for tool, n in calls_at_crash.items() if tools.calls.get(tool) != n}
    print(f"6. tool calls after the crash beyond 'publish': {repeated or 'none'}; total {tools.calls}")
    agent.send_signal(signal.SIGTERM)
    print(f"7. SIGTERM -> exit code {agent.wait(30)}. Look at {db} (sqlite3) and {log} (JSON logs).")
    tools.close()


if __name__ == "__main__":
    main()
