"""`litefleet`'s entry point. `litefleet serve` goes straight to the control plane: a restarted control plane should
not first load the CLI (typer, rich, the /v1 client: ~0.5 s); every other command goes to the typer app."""

from __future__ import annotations

import gc
import sys

# Installed for the CLI and the tests, imported by the serve path only because they are installed, and never used
# by it: httpx's own command line (click, rich, pygments), structlog's rich console renderer (we log JSON) and
# pydantic's v1 package, which FastAPI loads only to check that no model is a v1 model (none is). Left out, their
# importers take the fallback they take when the module is not installed: ~0.4 s off every start.
UNSERVED_MODULES = ("httpx._main", "rich", "pydantic.v1")


def main() -> None:
    if sys.argv[1:] != ["serve"]:
        from control_plane.cli.commands import app

        app()
        return
    gc.disable()  # until the app is built (control_plane.app.serve): the imports are most of the start
    leave_out_unserved_modules()
    from pydantic import ValidationError

    from agent_image.logs import configure_logging
    from control_plane.app import serve
    from control_plane.settings import Settings, TokenRefused
    from control_plane.storage.seaweed import ObjectStoreError

    configure_logging()  # as the typer app's callback does for every command
    try:
        settings = Settings()
        serve(settings)
    except (ValidationError, TokenRefused, ObjectStoreError) as exc:
        first = str(exc).strip().splitlines()
        print(f"litefleet serve: {type(exc).__name__}: {' '.join(first[:3])}", file=sys.stderr)
        raise SystemExit(2) from None


def leave_out_unserved_modules() -> None:
    """Make `import` of each UNSERVED_MODULES raise ImportError in this process (a None entry in sys.modules), unless
    it is already loaded. Only for a process that serves: the CLI and the tests keep them."""
    for name in UNSERVED_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
