"""agent store lag: replication measured against the store by the lag sampler (control_plane/observer/lag.py)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 12:05:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('store_txid', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('store_checked_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('synced_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('replication', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True))
        batch_op.add_column(sa.Column('replication_note', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True))
        batch_op.add_column(sa.Column('lag_sampled_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        for name in ('lag_sampled_at', 'replication_note', 'replication', 'synced_at', 'store_checked_at', 'store_txid'):
            batch_op.drop_column(name)
