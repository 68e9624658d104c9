"""tenant durability: the default `?durability=` of a tenant's agents (local | replicated)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 13:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # existing tenants answered after the local commit, as before
    with op.batch_alter_table('tenant', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('durability', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False, server_default='local')
        )


def downgrade() -> None:
    with op.batch_alter_table('tenant', schema=None) as batch_op:
        batch_op.drop_column('durability')
