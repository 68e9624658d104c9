"""node tls: a named client credential set and the explicit insecure flag for tcp:// engines

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 09:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tls', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('insecure', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('node', schema=None) as batch_op:
        batch_op.drop_column('insecure')
        batch_op.drop_column('tls')
