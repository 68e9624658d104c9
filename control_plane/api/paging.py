"""The two query parameters of every list route: `?limit=` (default 100, at most 1000) and `?cursor=` (the
`next_cursor` of the page before)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from control_plane.services.paging import DEFAULT_LIMIT, MAX_LIMIT

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page (default {DEFAULT_LIMIT})")]
CursorQuery = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]

__all__ = ["DEFAULT_LIMIT", "CursorQuery", "LimitQuery"]
