"""agent reservation: the node an unfinished operation's plan promised the agent's next incarnation

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 13:50:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0012'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reserved_node', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column('reserved_by', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_agent_reserved_node'), ['reserved_node'], unique=False)
        batch_op.create_index(batch_op.f('ix_agent_reserved_by'), ['reserved_by'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('agent', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_reserved_by'))
        batch_op.drop_index(batch_op.f('ix_agent_reserved_node'))
        batch_op.drop_column('reserved_by')
        batch_op.drop_column('reserved_node')
