"""The one rule for workflow ids, applied wherever a caller names one (start, fork, the HTTP API)."""

from __future__ import annotations

import os
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


def random_id() -> str:
    """A random workflow id: what `uuid.uuid4().hex` gives (32 hex digits, version 4 and variant bits set),
    without building a UUID object (a tenth of a trivial workflow's start)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()
