"""The `litefleet` command line: `launch.main` (the entry point), `commands` (the typer app over the /v1 client),
`local` (`litefleet up`/`down`)."""

from control_plane.cli.launch import main

__all__ = ["main"]
