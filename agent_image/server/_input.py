"""Reading a request: the JSON body (bounded), number query parameters, and the start body. Each failure is an
`InvalidRequest` (422 `invalid_request`), never a 500: this is the only place input enters the agent."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from agent_image._errors import InvalidRequest
from agent_image._ids import check_id

MAX_JSON_DEPTH = 100  # nesting a body may have: deeper values are refused before anything parses them again


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past what the parser recurses into
        raise InvalidRequest("the request body must be JSON") from None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise InvalidRequest(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when lists/objects in `value` nest deeper than `limit` (iterative: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def query_number(request: Request, name: str, default: float | None, low: float, high: float) -> float:
    """The number query parameter `name`, `default` when absent (required when `default` is None)."""
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise InvalidRequest(f"{name} is required")
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}")
    return value


def start_body(body: Any) -> tuple[str | None, list[Any], dict[str, Any]]:
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be an object: {"id"?, "args"?, "kwargs"?}')
    unknown = set(body) - {"id", "args", "kwargs"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    workflow_id, args, kwargs = body.get("id"), body.get("args", []), body.get("kwargs", {})
    if workflow_id is not None:
        check_id(workflow_id)
    if not isinstance(args, list):
        raise InvalidRequest("args must be a list")
    if not isinstance(kwargs, dict):
        raise InvalidRequest("kwargs must be an object")
    return workflow_id, args, kwargs


def start_wait(request: Request) -> float:
    """A start's `?wait=`: seconds (0-300) to wait for the result; `true` is 60, `false` 0."""
    raw = request.query_params.get("wait")
    if raw is None or raw.lower() == "false":
        return 0.0
    if raw.lower() == "true":
        return 60.0
    return query_number(request, "wait", 0, 0, 300)
