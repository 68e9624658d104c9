"""node warm pool: the pool's size and ready count as the last refill saw them, and the refill's lease

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 21:50:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0012'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_size', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('pool_ready', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('pool_memory_mb', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('pool_lock_token', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('pool_locked_until', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('pool_locked_until')
        batch_op.drop_column('pool_lock_token')
        batch_op.drop_column('pool_memory_mb')
        batch_op.drop_column('pool_ready')
        batch_op.drop_column('pool_size')
