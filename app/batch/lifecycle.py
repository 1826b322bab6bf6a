"""A batch's course: which `batch.dial` job carries it on, when it must next dial, when it is done.

Every function here runs in its caller's transaction with the batch row locked, so the dialer
ending a slice, a call's outcome queuing a row again, pause, resume and cancel take turns.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.batch.campaign import CallWindow, most_attempts
from app.jobs.queue import JobStatus, enqueue
from app.models import Batch, BatchRow, BatchStatus, Job
from app.models.batch import RowState as RowState  # defined with the column it fills

log = logging.getLogger("talkstack.batch")

DIAL_JOB = "batch.dial"
DIAL_JOB_ATTEMPTS = 50
# Batch statuses that still have rows to dial or outcomes to wait for.
OPEN = (BatchStatus.RUNNING, BatchStatus.PAUSED)


# Rows the dialer has still to place, or to settle: the batch is not done while one is left.
UNDECIDED = (RowState.QUEUED, RowState.DIALING)


async def wake_dialer(session: AsyncSession, batch: Batch, at: datetime) -> None:
    """Have the batch's dial job run by `at`: the one queued is moved earlier, a running one
    decides its next slice after this transaction (it locks the batch), and a new one is queued
    when there is none."""
    job = (
        await session.get(Job, batch.dial_job_id, with_for_update=True)
        if batch.dial_job_id
        else None
    )
    if job is not None and job.status == JobStatus.RUNNING:
        return
    if job is not None and job.status == JobStatus.QUEUED:
        if job.next_attempt_at > at:
            job.next_attempt_at = at
        return
    new = await enqueue(
        session,
        kind=DIAL_JOB,
        payload={"batch_id": str(batch.id)},
        project_id=batch.project_id,
        run_at=at,
        max_attempts=DIAL_JOB_ATTEMPTS,
    )
    batch.dial_job_id = new.id


async def next_dial_time(session: AsyncSession, batch: Batch, now: datetime) -> datetime | None:
    """When a row of the batch can next be dialed (or a claim settled); None: no row waits."""
    dialing = await session.scalar(
        select(exists().where(BatchRow.batch_id == batch.id, BatchRow.state == RowState.DIALING))
    )
    if dialing:
        return now  # a claim to settle (reconcile) soon
    queued = select(BatchRow.id).where(
        BatchRow.batch_id == batch.id, BatchRow.state == RowState.QUEUED
    )
    if await session.scalar(queued.where(BatchRow.next_attempt_at.is_(None)).limit(1)):
        due = now
    else:
        earliest = await session.scalar(
            select(func.min(BatchRow.next_attempt_at)).where(
                BatchRow.batch_id == batch.id, BatchRow.state == RowState.QUEUED
            )
        )
        if earliest is None:
            return None
        due = max(earliest, now)
    window = CallWindow.load(batch.call_window)
    return window.next_open(due) if window else due


async def finish_if_done(session: AsyncSession, batch: Batch, now: datetime) -> bool:
    """Complete the batch when no row can be dialed any more: none queued or being dialed and,
    with retries, no call still to end whose outcome could queue its row again."""
    if batch.status not in OPEN:
        return True
    pending = exists().where(BatchRow.batch_id == batch.id, BatchRow.state.in_(UNDECIDED))
    if await session.scalar(select(pending)):
        return False
    if batch.retry:
        undecided = exists().where(
            BatchRow.batch_id == batch.id,
            BatchRow.state == RowState.DIALED,
            BatchRow.outcome.is_(None),
            BatchRow.call_attempts < most_attempts(batch.retry),
        )
        if await session.scalar(select(undecided)):
            return False
    batch.status, batch.finished_at, batch.dial_job_id = BatchStatus.COMPLETED, now, None
    log.info("batch %s completed", batch.id)
    return True
