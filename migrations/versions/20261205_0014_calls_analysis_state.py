"""calls: where the call's analysis stands

The analysis of a conversation waits for the call's final status. Rather than a job polling
for it, whichever comes second, the conversation's end or the final status, queues the job in
its own transaction; this column says whether the conversation has ended (`waiting`) and
whether the job is queued (`queued`). Calls of before stay null: their jobs are already queued.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('analysis_state', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('analysis_state')
