"""webhook deliveries and secret rotation

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import json
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import app.db


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=True),
    sa.Column('event_id', sa.String(length=40), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('call_sid', sa.String(length=64), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', app.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_webhook_deliveries_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_project_created', ['project_id', 'created_at', 'id'], unique=False)

    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_secret_previous', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('webhook_secret_previous_expires_at', app.db.UTCDateTime(timezone=True), nullable=True))

    _backfill_deliveries()


def downgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_column('webhook_secret_previous_expires_at')
        batch_op.drop_column('webhook_secret_previous')

    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_project_created')

    op.drop_table('webhook_deliveries')


# The events already queued, delivered or dead when this runs are listed (and can be
# redelivered) like later ones: one delivery per webhook job, with the job's id as its own (the
# delivery job falls back to that id for jobs queued before their payload named a delivery).
_JOBS = sa.table(
    'jobs',
    sa.column('id', sa.Uuid()),
    sa.column('kind', sa.String()),
    sa.column('payload', sa.JSON()),
    sa.column('status', sa.String()),
    sa.column('attempts', sa.Integer()),
    sa.column('next_attempt_at', app.db.UTCDateTime()),
    sa.column('last_error', sa.Text()),
    sa.column('project_id', sa.Uuid()),
    sa.column('created_at', app.db.UTCDateTime()),
    sa.column('updated_at', app.db.UTCDateTime()),
)
_PROJECTS = sa.table('projects', sa.column('id', sa.Uuid()))
_DELIVERIES = sa.table(
    'webhook_deliveries',
    sa.column('id', sa.Uuid()),
    sa.column('project_id', sa.Uuid()),
    sa.column('job_id', sa.Uuid()),
    sa.column('event_id', sa.String()),
    sa.column('event', sa.String()),
    sa.column('call_sid', sa.String()),
    sa.column('body', sa.Text()),
    sa.column('status', sa.String()),
    sa.column('attempts', sa.Integer()),
    sa.column('last_status_code', sa.Integer()),
    sa.column('last_error', sa.Text()),
    sa.column('next_attempt_at', app.db.UTCDateTime()),
    sa.column('created_at', app.db.UTCDateTime()),
    sa.column('updated_at', app.db.UTCDateTime()),
)
_HTTP_STATUS = re.compile(r'answered HTTP (\d{3})$')
_BATCH = 1000


def _delivery(job: Any) -> dict[str, Any] | None:
    payload = job.payload or {}
    body = payload.get('body')
    if not isinstance(body, str) or not payload.get('event_id'):
        return None
    try:
        call = json.loads(body).get('call') or {}
    except (ValueError, AttributeError):
        call = {}
    sid = call.get('callSid') if isinstance(call, dict) else None
    if job.status == 'done':
        status = 'delivered'
    elif job.status == 'dead':
        status = 'dead'
    else:
        status = 'failed' if job.last_error else 'pending'
    answered = _HTTP_STATUS.search(job.last_error or '')
    return {
        'id': job.id,
        'project_id': job.project_id,
        'job_id': job.id,
        'event_id': str(payload['event_id'])[:40],
        'event': str(payload.get('event') or 'call.status')[:32],
        'call_sid': sid[:64] if isinstance(sid, str) else None,
        'body': body,
        'status': status,
        'attempts': job.attempts,
        'last_status_code': int(answered.group(1)) if answered else None,
        'last_error': None if status == 'delivered' else job.last_error,
        'next_attempt_at': job.next_attempt_at if job.status == 'queued' else None,
        'created_at': job.created_at,
        'updated_at': job.updated_at,
    }


def _backfill_deliveries() -> None:
    conn = op.get_bind()
    after = None
    while True:
        query = (
            sa.select(_JOBS)
            .join(_PROJECTS, _PROJECTS.c.id == _JOBS.c.project_id)
            .where(_JOBS.c.kind == 'webhook.call_event')
            .order_by(_JOBS.c.id)
            .limit(_BATCH)
        )
        if after is not None:
            query = query.where(_JOBS.c.id > after)
        jobs = conn.execute(query).all()
        if not jobs:
            return
        rows = [row for row in map(_delivery, jobs) if row is not None]
        if rows:
            conn.execute(sa.insert(_DELIVERIES), rows)
        after = jobs[-1].id
