"""runtimes: a tenant's OCI runtime (runc, runsc), the runtimes each node's engine offers

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 12:05:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # existing tenants ran under runc, and existing nodes are known to offer at least that (a heartbeat refreshes)
    with op.batch_alter_table('tenant', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('runtime', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False, server_default='runc')
        )
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runtimes', sa.JSON(), nullable=True, server_default='["runc"]'))


def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('runtimes')
    with op.batch_alter_table('tenant', schema=None) as batch_op:
        batch_op.drop_column('runtime')
