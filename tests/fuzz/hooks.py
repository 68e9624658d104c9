"""Schemathesis hooks for the fuzz run (loaded with SCHEMATHESIS_HOOKS=tests.fuzz.hooks).

`no_server_error`: a 500, or any 5xx that is not one of the API's documented "a part is not there" answers
(`UNAVAILABLE`, always in the `{code, message}` envelope), fails the run. Every response is also tallied into the
file named by LITEFLEET_FUZZ_TALLY (one JSON line each) for the harness's summary.

`map_query`: waits are bounded to one second (`?wait=true&timeout=3600` would hold a worker for an hour: the run
is bounded, not the API's limits)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import schemathesis

# 5xx answers the API gives on purpose: the tenant has no running agent, an agent did not answer, a request held
# while its agent is moved outlasted the hold (a fuzzed evacuation "moves" agents no engine can start), the
# observer (read-only copies) is off or failed. Nothing else with a 5xx status is acceptable.
UNAVAILABLE = {
    (503, "no_agent_running"),
    (502, "agent_unreachable"),
    (503, "agent_moving"),
    (503, "observer_unavailable"),
}
MAX_WAIT = 1.0
_lock = threading.Lock()


def _bounded(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return value
    return MAX_WAIT if number > MAX_WAIT else value


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(query, dict):
        for key in ("timeout", "wait"):
            if key in query:
                query[key] = _bounded(query[key])
    return query


def _code(response: schemathesis.Response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) and isinstance(body.get("message"), str) else None


@schemathesis.check
def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> None:
    status, code = response.status_code, _code(response)
    tally = os.environ.get("LITEFLEET_FUZZ_TALLY")
    if tally:
        line = json.dumps({"method": case.method, "path": case.path, "status": status, "code": code})
        with _lock, open(tally, "a") as out:
            out.write(line + "\n")
    if status >= 500 and (status, code) not in UNAVAILABLE:
        raise AssertionError(f"server error {status} ({code}): {response.content[:300]!r}")
