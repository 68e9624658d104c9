"""`/metrics`: the control plane in Prometheus text format, behind the same bearer token as `/v1`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from control_plane.api.deps import require_admin

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_admin)])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
