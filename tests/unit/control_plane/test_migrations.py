"""The migrations produce exactly the schema the models describe (a model change without a migration fails)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from control_plane.db import models  # noqa: F401  (registers the tables)
from control_plane.db.engine import migrate


def test_models_and_migrations_agree(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


def test_migrating_twice_is_harmless(engine: Engine) -> None:
    migrate(engine.url.render_as_string(hide_password=False))
