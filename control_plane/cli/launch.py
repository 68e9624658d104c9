"""`litefleet`'s entry point. `litefleet serve` goes straight to the control plane: a restarted control plane should
not first load the CLI (typer, rich, the /v1 client: ~0.5 s); every other command goes to the typer app."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] != ["serve"]:
        from control_plane.cli.commands import app

        app()
        return
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
