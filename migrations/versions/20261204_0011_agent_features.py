"""agent transfer, tools, voicemail, analysis presets

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transfer_number', sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column('transfer_mode', sa.String(length=8), server_default='cold', nullable=False)
        )
        batch_op.add_column(sa.Column('tools', sa.JSON(), server_default='[]', nullable=False))
        batch_op.add_column(sa.Column('voicemail_message', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('success_criteria', sa.Text(), nullable=True))
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transferred_to', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('transferred_to')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('success_criteria')
        batch_op.drop_column('voicemail_message')
        batch_op.drop_column('tools')
        batch_op.drop_column('transfer_mode')
        batch_op.drop_column('transfer_number')
