"""agents and phone numbers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('system_instruction', sa.Text(), nullable=False),
    sa.Column('voice_id', sa.String(length=64), nullable=False),
    sa.Column('first_message', sa.Text(), nullable=True),
    sa.Column('language', sa.String(length=35), nullable=False),
    sa.Column('max_call_duration_seconds', sa.Integer(), nullable=False),
    sa.Column('analysis_questions', sa.JSON(), nullable=False),
    sa.Column('is_deleted', sa.Boolean(), nullable=False),
    sa.Column('deleted_at', app.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_agents_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents'))
    )
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.create_index('ix_agents_project_id_created_at', ['project_id', 'created_at'], unique=False)

    op.create_table('phone_numbers',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('e164', sa.String(length=16), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.Uuid(), nullable=False),
    sa.Column('twilio_kind', sa.String(length=16), nullable=False),
    sa.Column('twilio_sid', sa.String(length=34), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_phone_numbers_agent_id_agents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_phone_numbers_project_id_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_phone_numbers_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_phone_numbers')),
    sa.UniqueConstraint('agent_id', name=op.f('uq_phone_numbers_agent_id')),
    sa.UniqueConstraint('e164', name=op.f('uq_phone_numbers_e164'))
    )
    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_phone_numbers_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_phone_numbers_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_secret', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('active_agent_id', sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_projects_active_agent_id_agents'), 'agents', ['active_agent_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_projects_active_agent_id_agents'), type_='foreignkey')
        batch_op.drop_column('active_agent_id')
        batch_op.drop_column('webhook_secret')

    with op.batch_alter_table('phone_numbers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_phone_numbers_user_id'))
        batch_op.drop_index(batch_op.f('ix_phone_numbers_project_id'))

    op.drop_table('phone_numbers')
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_index('ix_agents_project_id_created_at')

    op.drop_table('agents')
