"""The two query parameters of every list route: `?limit=` (default 100, at most 1000) and `?cursor=` (the
`next_cursor` of the page before)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Response
from pydantic import BaseModel
from pydantic_core import to_json

from control_plane.db.models import Page
from control_plane.services.paging import DEFAULT_LIMIT, MAX_LIMIT

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page (default {DEFAULT_LIMIT})")]
CursorQuery = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]


def page_answer(item: type[BaseModel], page: Page[Any]) -> Response:
    """The page as JSON, serialized once, as `Page[item]`: only `item`'s fields go out, whatever the service put
    in the page (what the route's `response_model` guaranteed). Returned as a model, FastAPI would dump it,
    validate the dump against the `response_model` and serialize that: three passes over every row, most of a full
    page's cost. The route keeps `response_model` for its schema."""
    typed = Page[item](items=page.items, next_cursor=page.next_cursor)  # type: ignore[valid-type]
    return Response(typed.model_dump_json(), media_type="application/json")


def rows_answer(items: list[dict[str, Any]], next_cursor: str | None) -> Response:
    """A page built by a service as JSON-ready dicts (each holding exactly its public model's fields, in their
    order, with the values the model would hold: services/tenants.py `tenant_rows`, nodes.py `node_rows`,
    operations.py `operation_rows`), serialized as they are by the serializer `page_answer` uses: the same bytes
    as `Page[item]`, without a model built (and validated) per row, most of a tenant page's 400 agents' cost."""
    return Response(
        to_json({"items": items, "next_cursor": next_cursor}, inf_nan_mode="null"), media_type="application/json"
    )


__all__ = ["DEFAULT_LIMIT", "CursorQuery", "LimitQuery", "page_answer", "rows_answer"]
