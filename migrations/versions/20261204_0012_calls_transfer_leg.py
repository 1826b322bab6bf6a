"""calls: the warm transfer's call to the human (its SID, status, duration, price)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transfer_call_sid', sa.String(length=34), nullable=True))
        batch_op.add_column(sa.Column('transfer_status', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('transfer_seconds', sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column('transfer_cost', sa.Numeric(precision=12, scale=5), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('transfer_cost')
        batch_op.drop_column('transfer_seconds')
        batch_op.drop_column('transfer_status')
        batch_op.drop_column('transfer_call_sid')
