"""The `litefleet` command line: `commands` (the typer app over the /v1 client), `local` (`litefleet up`/`down`)."""

from control_plane.cli.commands import app

__all__ = ["app"]
