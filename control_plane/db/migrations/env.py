"""Alembic environment: the fleet DB's models are the target; the URL comes from the caller's Config."""

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

from control_plane.db import models  # noqa: F401  (registers the tables)

config = context.config


def run() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
