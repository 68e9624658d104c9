"""`litefleet serve`: build the fleet from settings and run the API (uvicorn) with its reconciler."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from control_plane.api import create_app
from control_plane.db import make_engine
from control_plane.fleet import Fleet
from control_plane.objectstore import EmbeddedStore, StoreAddress
from control_plane.settings import Settings, admin_secret
from control_plane.storage import ObjectStorage, SeaweedCredentials


def embedded_store(settings: Settings) -> EmbeddedStore:
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


def build_fleet(settings: Settings) -> Fleet:
    store = embedded_store(settings)
    storage = ObjectStorage(settings.store_endpoint, settings.s3_admin_key, admin_secret(settings), settings.bucket)
    storage.ensure_bucket()
    return Fleet(make_engine(settings.fleet_database_url), settings, storage, SeaweedCredentials(store, storage))


def build_app(settings: Settings) -> FastAPI:
    return create_app(settings, build_fleet(settings))


def serve(settings: Settings) -> None:
    uvicorn.run(build_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
