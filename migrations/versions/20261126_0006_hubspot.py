"""hubspot

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('hubspot_connections',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('encrypted_token', sa.Text(), nullable=False),
    sa.Column('portal_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('connected_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_sync_at', app.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_sync_result', sa.String(length=16), nullable=True),
    sa.Column('last_sync_call_sid', sa.String(length=34), nullable=True),
    sa.Column('last_sync_error', sa.Text(), nullable=True),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_hubspot_connections_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hubspot_connections')),
    sa.UniqueConstraint('project_id', name=op.f('uq_hubspot_connections_project_id'))
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hubspot_contact_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('hubspot_call_id', sa.String(length=32), nullable=True))


def downgrade() -> None:
    # In place (SQLite 3.35+ drops a plain column): recreating `calls` would fire the ON DELETE
    # actions of the tables that reference it (call analyses, batch rows).
    with op.batch_alter_table('calls', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('hubspot_call_id')
        batch_op.drop_column('hubspot_contact_id')

    op.drop_table('hubspot_connections')
