"""webhook_deliveries: an index on created_at, for the purge of expired deliveries

Delivered and dead deliveries are deleted WEBHOOK_DELIVERY_RETENTION_DAYS after their event;
the purge takes the oldest first, which the project-first index cannot serve.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op


revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        'ix_webhook_deliveries_created', 'webhook_deliveries', ['created_at'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_webhook_deliveries_created', table_name='webhook_deliveries')
