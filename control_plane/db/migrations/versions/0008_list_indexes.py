"""list indexes: operations newest first (alone, per tenant, per state) and a node's events (issue 14)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 12:00:00

"""
from typing import Sequence, Union

from alembic import op


revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index('ix_operation_created_at_id', 'operation', ['created_at', 'id'], unique=False)
    op.create_index('ix_operation_tenant_created_at', 'operation', ['tenant', 'created_at'], unique=False)
    op.create_index('ix_operation_state_created_at', 'operation', ['state', 'created_at'], unique=False)
    op.create_index('ix_event_node_id', 'event', ['node', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_event_node_id', table_name='event')
    op.drop_index('ix_operation_state_created_at', table_name='operation')
    op.drop_index('ix_operation_tenant_created_at', table_name='operation')
    op.drop_index('ix_operation_created_at_id', table_name='operation')
