"""The jobs table as a queue: enqueue in the caller's transaction, claim with a lease, settle.

Every settling update is fenced by the claim (`status='running'` and the `attempts` the claim
set): a worker whose lease expired and whose job another worker took over changes nothing.
"""

from __future__ import annotations

import logging
import random
import uuid
import weakref
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Table, and_, delete, event, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.db import new_id, utcnow
from app.models import Job
from app.models.job import JobStatus as JobStatus  # defined with the column it fills

log = logging.getLogger("talkstack.jobs")


MAX_ERROR_LENGTH = 2000
_ENQUEUED = "talkstack.jobs_enqueued"

Sessionmaker = async_sessionmaker[AsyncSession]


async def enqueue(
    session: AsyncSession,
    *,
    kind: str,
    payload: dict[str, Any],
    project_id: uuid.UUID | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 5,
) -> Job:
    """Add a job to the caller's transaction; it exists only if that transaction commits.

    Never commits. When the session commits, workers in this process wake at once (others
    find the job at their next poll).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    job = Job(
        kind=kind,
        payload=payload,
        project_id=project_id,
        status=JobStatus.QUEUED,
        attempts=0,
        max_attempts=max_attempts,
        next_attempt_at=run_at or utcnow(),
    )
    session.add(job)
    await session.flush()
    session.info[_ENQUEUED] = True
    return job


def job_row(
    *, kind: str, payload: dict[str, Any], project_id: uuid.UUID | None, max_attempts: int
) -> dict[str, Any]:
    """A job due now, as a row for `enqueue_many`; its time, which orders the queue, is taken
    here, when the row is made."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    now = utcnow()
    return {
        "id": new_id(),
        "kind": kind,
        "payload": payload,
        "project_id": project_id,
        "status": JobStatus.QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


_INSERT_JOBS = insert(cast(Table, Job.__table__))


async def enqueue_many(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """`enqueue` for many jobs (rows from `job_row`) in one INSERT sent as one executemany,
    with no ORM objects: the status-callback writer queues jobs by the thousand.

    Like `enqueue`: in the caller's transaction, never commits, and workers in this process
    wake when it commits.
    """
    if not rows:
        return
    await session.execute(_INSERT_JOBS, rows)
    session.info[_ENQUEUED] = True


async def requeue_now(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Make a queued job due now with all its tries ahead of it again, in the caller's
    transaction; False (nothing changed) if it is not queued (a worker holds it, or it is
    finished)."""
    now = utcnow()
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(attempts=0, next_attempt_at=now, last_error=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    session.info[_ENQUEUED] = True
    return True


async def claim(
    sessionmaker: Sessionmaker,
    *,
    limit: int,
    lease_seconds: float,
    kinds: Collection[str] | None = None,
) -> list[Job]:
    """Take up to `limit` due jobs, oldest first, for `lease_seconds`; in one short transaction.

    Due: queued with `next_attempt_at` reached, or running with an expired lease (its worker
    died: the job runs again). PostgreSQL skips rows another claimer holds (SKIP LOCKED);
    SQLite's single writer makes the one UPDATE ... RETURNING atomic on its own.
    """
    if limit <= 0 or (kinds is not None and not kinds):
        return []
    now = utcnow()
    due = or_(
        and_(Job.status == JobStatus.QUEUED, Job.next_attempt_at <= now),
        # An expired lease on the last allowed attempt is buried by `reap`, not run again.
        and_(
            Job.status == JobStatus.RUNNING, Job.locked_until < now, Job.attempts < Job.max_attempts
        ),
    )
    pick = select(Job.id).where(due).order_by(Job.next_attempt_at, Job.created_at).limit(limit)
    if kinds is not None:
        pick = pick.where(Job.kind.in_(sorted(kinds)))
    async with sessionmaker() as session:
        if session.get_bind().dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(Job)
            .where(Job.id.in_(pick))
            .values(
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                locked_until=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(Job)
            .execution_options(synchronize_session=False)
        )
        jobs = list((await session.scalars(stmt)).all())
        await session.commit()
    # RETURNING gives no order.
    jobs.sort(key=lambda job: (job.next_attempt_at, job.created_at))
    return jobs


async def complete(sessionmaker: Sessionmaker, job: Job) -> bool:
    """Mark a claimed job done; False if the lease was lost (nothing changed)."""
    return await _settle(sessionmaker, job, status=JobStatus.DONE, locked_until=None)


async def retry(sessionmaker: Sessionmaker, job: Job, error: str, delay: float) -> bool:
    """Put a claimed job back in the queue to run again in `delay` seconds."""
    return await _settle(
        sessionmaker,
        job,
        status=JobStatus.QUEUED,
        locked_until=None,
        next_attempt_at=utcnow() + timedelta(seconds=max(delay, 0.0)),
        last_error=_clip(error),
    )


async def bury(sessionmaker: Sessionmaker, job: Job, error: str) -> bool:
    """Give up on a claimed job: it stays `dead` for a person to look at."""
    return await _settle(
        sessionmaker, job, status=JobStatus.DEAD, locked_until=None, last_error=_clip(error)
    )


async def release(sessionmaker: Sessionmaker, job: Job) -> bool:
    """Hand a claimed job back untouched (shutdown): due now, and this attempt not counted."""
    return await _settle(
        sessionmaker,
        job,
        status=JobStatus.QUEUED,
        attempts=job.attempts - 1,
        locked_until=None,
        next_attempt_at=utcnow(),
    )


async def extend(sessionmaker: Sessionmaker, jobs: Sequence[Job], lease_seconds: float) -> int:
    """Renew the leases of jobs this worker still holds; return how many were renewed."""
    if not jobs:
        return 0
    now = utcnow()
    held = or_(*(and_(Job.id == job.id, Job.attempts == job.attempts) for job in jobs))
    async with sessionmaker() as session:
        result = await session.execute(
            update(Job)
            .where(held, Job.status == JobStatus.RUNNING)
            .values(locked_until=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    return _rowcount(result)


async def reap(sessionmaker: Sessionmaker) -> list[Job]:
    """Bury jobs whose worker died during their last allowed attempt; return them."""
    now = utcnow()
    async with sessionmaker() as session:
        dead = list(
            (
                await session.scalars(
                    update(Job)
                    .where(
                        Job.status == JobStatus.RUNNING,
                        Job.locked_until < now,
                        Job.attempts >= Job.max_attempts,
                    )
                    .values(
                        status=JobStatus.DEAD,
                        locked_until=None,
                        updated_at=now,
                        last_error="The worker stopped during the last attempt (lease expired).",
                    )
                    .returning(Job)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        )
        await session.commit()
    return dead


async def purge_done(sessionmaker: Sessionmaker, *, older_than: datetime, batch: int = 1000) -> int:
    """Delete up to `batch` finished jobs last run before `older_than` (dead ones are kept)."""
    # next_attempt_at of a done job is when it last ran: the (status, next_attempt_at) index
    # serves this without a scan.
    old = (
        select(Job.id)
        .where(Job.status == JobStatus.DONE, Job.next_attempt_at < older_than)
        .limit(batch)
    )
    async with sessionmaker() as session:
        result = await session.execute(
            delete(Job).where(Job.id.in_(old)).execution_options(synchronize_session=False)
        )
        await session.commit()
    return _rowcount(result)


def backoff(attempt: int, *, base: float, cap: float = 3600.0) -> float:
    """Seconds before retry number `attempt` (1-based): base·2^(attempt-1), capped, ±20 %."""
    delay = min(cap, base * 2.0 ** max(attempt - 1, 0))
    # Jitter spreads retries of many jobs that failed together; it needs no crypto RNG.
    return delay * random.uniform(0.8, 1.2)  # noqa: S311


def wake_on_commit(engine: AsyncEngine, notify: Callable[[], None]) -> Callable[[], None]:
    """Call `notify` after each commit on `engine` that enqueued a job; return an unsubscribe."""
    callbacks = _wakers.setdefault(engine.sync_engine, [])
    callbacks.append(notify)
    return lambda: callbacks.remove(notify)


_wakers: weakref.WeakKeyDictionary[Engine, list[Callable[[], None]]] = weakref.WeakKeyDictionary()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if not session.info.pop(_ENQUEUED, False):
        return
    engine = getattr(session.bind, "engine", None)
    if engine is None:
        return
    for notify in list(_wakers.get(engine, ())):
        notify()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_ENQUEUED, None)


async def _settle(sessionmaker: Sessionmaker, job: Job, **values: Any) -> bool:
    now = utcnow()
    async with sessionmaker() as session:
        result = await session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.attempts == job.attempts)
            .values(updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    if _rowcount(result) != 1:
        log.warning(
            "job %s (%s): its lease expired and another worker took it over; "
            "this worker's outcome is dropped",
            job.id,
            job.kind,
        )
        return False
    for key, value in values.items():
        setattr(job, key, value)
    job.updated_at = now
    return True


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def _clip(error: str) -> str:
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 1] + "…"
