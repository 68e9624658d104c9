"""The fleet DB for unit tests: SQLite in a temp dir, and PostgreSQL too when LITEFLEET_TEST_DATABASE_URL is set
(CI sets it: the same tests run on both)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from control_plane.db.engine import make_engine, migrate

# Engines a test made and did not dispose keep their pooled connections until the collector finds them; the
# server's 100 slots then run out in a later test, which fails with a 500 far from the leak. Caught here instead:
# a test starts with at most this many connections open (one at a time, the suite needs about 15).
LEAKED_AFTER = 40
CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("LITEFLEET_TEST_DATABASE_URL") else [])


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        url = os.environ["LITEFLEET_TEST_DATABASE_URL"]
        reset = sqlalchemy.create_engine(url)
        with reset.begin() as connection:
            open_now = connection.execute(sqlalchemy.text(CONNECTIONS)).scalar_one()
            assert open_now <= LEAKED_AFTER, f"{open_now} connections are open: earlier tests leaked engines"
            connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        reset.dispose()
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()
