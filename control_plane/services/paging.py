"""Cursor paging for every list route: keyset pages (`WHERE key > last ORDER BY key LIMIT n`), so a page costs the
same at row 10 as at row 100,000, and rows inserted while a client walks the pages are never returned twice.

A cursor is opaque to clients: the list's name and the last row's sort key, as URL-safe base64 of JSON. It is
not a secret nor signed: a forged one can only select a different page of a list the caller may read anyway."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, select
from sqlmodel import Session

from control_plane.errors import InvalidCursor

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def encode(listing: str, *key: str | int | float) -> str:
    raw = json.dumps([listing, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str | None, listing: str, *types: type) -> tuple[Any, ...] | None:
    """The sort key a cursor of `listing` carries (None without a cursor); InvalidCursor for anything else."""
    if cursor is None:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        decoded = None
    if (
        not isinstance(decoded, list)
        or len(decoded) != len(types) + 1
        or decoded[0] != listing
        or not all(_is(value, kind) for value, kind in zip(decoded[1:], types, strict=True))
    ):
        raise InvalidCursor(f"cursor is not one this list ({listing}) gave out; start again without it")
    return tuple(decoded[1:])


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def by_name(
    session: Session, table: Table, names: Sequence[str], listing: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """One page of `table`'s columns `names` (among them its unique `name`) in name order, read as plain rows
    (dicts): the page, the name it starts after (None on the first page) and the cursor of the next page (None on
    the last). One query, `limit + 1` rows to know whether there is a next page."""
    after = decode(cursor, listing, str)
    query = select(*(table.c[name] for name in names)).order_by(table.c.name).limit(limit + 1)
    if after is not None:
        query = query.where(table.c.name > after[0])
    rows = [dict(zip(names, row, strict=True)) for row in session.connection().execute(query)]
    page = rows[:limit]
    next_cursor = encode(listing, page[-1]["name"]) if len(rows) > limit else None
    return page, (after[0] if after else None), next_cursor
