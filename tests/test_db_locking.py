"""Row locks: a read-modify-write under `with_for_update` never loses an update (on SQLite too,
where the whole database is locked instead of the row)."""

from __future__ import annotations

import asyncio

from app.jobs.queue import enqueue
from app.models import Job


async def test_concurrent_read_modify_writes_take_turns(app):
    maker = app.state.ctx.sessionmaker
    async with maker() as session:
        job = await enqueue(session, kind="test.counter", payload={})
        await session.commit()
        job_id = job.id

    async def bump() -> None:
        async with maker() as session:
            row = await session.get(Job, job_id, with_for_update=True)
            assert row is not None
            seen = row.attempts
            await asyncio.sleep(0.05)  # the other transaction runs meanwhile
            row.attempts = seen + 1
            await session.commit()

    await asyncio.gather(*(bump() for _ in range(5)))

    async with maker() as session:
        row = await session.get(Job, job_id)
        assert row is not None and row.attempts == 5


async def test_plain_reads_do_not_wait_for_a_writer(app):
    maker = app.state.ctx.sessionmaker
    async with maker() as session:
        job = await enqueue(session, kind="test.counter", payload={})
        await session.commit()
        job_id = job.id
    async with maker() as writer:
        locked = await writer.get(Job, job_id, with_for_update=True)
        assert locked is not None
        async with maker() as reader:
            # Answers at once from the last committed state, while the writer holds its lock.
            row = await asyncio.wait_for(reader.get(Job, job_id), 2)
            assert row is not None and row.attempts == 0
        await writer.rollback()
