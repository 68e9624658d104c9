"""The one rule for workflow ids, applied wherever a caller names one (start, fork, the HTTP API)."""

from __future__ import annotations

import re

from agent_image._errors import InvalidRequest

ID_RULE = "1-200 characters of letters, digits and . _ : -"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def check_id(value: object, what: str = "id") -> str:
    """`value` if it is a valid workflow id, else InvalidRequest. No '/' (ids are URL path segments), no
    whitespace, bounded length."""
    if not (isinstance(value, str) and _ID.fullmatch(value)):
        raise InvalidRequest(f"{what} must be {ID_RULE}")
    return value
