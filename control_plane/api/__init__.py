"""The HTTP API (`/v1`): one router per resource, each route one sentence over `control_plane.services`."""

from control_plane.api import metrics, nodes, operations, tenants, tokens, workflows

ROUTERS = (
    nodes.router,
    tenants.router,
    tenants.tenant_router,
    tokens.router,
    workflows.router,
    workflows.fleet_router,
    operations.router,
    operations.events_router,
    metrics.router,
)

__all__ = ["ROUTERS"]
