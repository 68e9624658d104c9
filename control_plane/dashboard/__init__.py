"""The dashboard: server-rendered pages under `/ui` (Jinja2 templates, inline SVG charts, server-sent events for
the live step log and event stream), behind the API's token. `GET /` leads there."""

from control_plane.dashboard.routes import router

__all__ = ["router"]
