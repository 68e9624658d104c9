"""Values crossing the durable boundary are JSON: what a step returns is what its replay returns."""

from __future__ import annotations

import json
from typing import Any

from agent_image._errors import NotJSONError

# One encoder for every dump: `json.dumps` with options builds a new JSONEncoder per call (a fifth of a trivial
# step's CPU). Its `encode` keeps no state between calls, so threads share it.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def dump(value: Any, what: str) -> str:
    """Serialise `value` or raise `NotJSONError` naming `what` (e.g. "step 'fetch' returned")."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise NotJSONError(
            f"{what} a value that is not JSON ({exc}); use dict, list, str, int, float, bool or None"
        ) from None


_EXACT = (str, int, float, bool, type(None))  # types whose JSON round trip gives back an equal value


def roundtrip(value: Any, what: str) -> tuple[str, Any]:
    """The JSON text and the value as replay will see it (tuples become lists, int keys become strings)."""
    text = dump(value, what)
    if type(value) in _EXACT:
        return text, value
    return text, json.loads(text)


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)
