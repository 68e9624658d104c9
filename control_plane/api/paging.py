"""The two query parameters of every list route: `?limit=` (default 100, at most 1000) and `?cursor=` (the
`next_cursor` of the page before)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Response

from control_plane.db.models import Page
from control_plane.services.paging import DEFAULT_LIMIT, MAX_LIMIT

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page (default {DEFAULT_LIMIT})")]
CursorQuery = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


def page_answer(page: Page[Any]) -> Response:
    """The page as JSON, serialized once. Returned as a model, FastAPI would dump it, validate the dump against
    the route's `response_model` and serialize that: three passes over every row, most of a full page's cost.
    The route keeps `response_model` for its schema; `model_dump_json` is the same serializer."""
    return Response(page.model_dump_json(), media_type="application/json")


__all__ = ["DEFAULT_LIMIT", "CursorQuery", "LimitQuery", "page_answer"]
