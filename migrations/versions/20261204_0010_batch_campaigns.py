"""batch campaigns: call window, retries, pause

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("call_window", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("retry", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("dial_job_id", sa.Uuid(), nullable=True))

    with op.batch_alter_table("batch_rows", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("call_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))
        batch_op.create_index("ix_batch_rows_call_id", ["call_id"], unique=False)

    # Rows dialed before this revision made one call each; a finished one has its outcome.
    op.execute("UPDATE batch_rows SET call_attempts = 1 WHERE call_id IS NOT NULL")
    op.execute(
        "UPDATE batch_rows SET outcome = (SELECT calls.status FROM calls"
        " WHERE calls.id = batch_rows.call_id AND calls.status IN"
        " ('completed', 'busy', 'failed', 'no-answer', 'canceled', 'voicemail', 'silence'))"
        " WHERE call_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("batch_rows", schema=None) as batch_op:
        batch_op.drop_index("ix_batch_rows_call_id")
        batch_op.drop_column("outcome")
        batch_op.drop_column("call_attempts")

    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("dial_job_id")
        batch_op.drop_column("retry")
        batch_op.drop_column("call_window")
