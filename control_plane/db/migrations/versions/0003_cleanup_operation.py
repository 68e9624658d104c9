"""cleanup operation: the health monitor queues stale-container removal instead of doing it itself

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:20:00

"""
from typing import Sequence, Union

from alembic import op


revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """PostgreSQL keeps the kinds in a native enum; SQLite stores the name in a VARCHAR with no constraint."""
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute("ALTER TYPE operationkind ADD VALUE IF NOT EXISTS 'cleanup'")


def downgrade() -> None:
    """An enum value cannot be dropped in PostgreSQL without rebuilding the type: left in place."""
