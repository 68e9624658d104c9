from control_plane.cli.commands import app

app()
