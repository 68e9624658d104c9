"""agent unconfirmed commits: the runtime's own count of commits no sync has confirmed yet (from /readyz)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 19:05:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unconfirmed_commits', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.drop_column('unconfirmed_commits')
