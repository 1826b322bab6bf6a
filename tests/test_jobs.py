"""The durable jobs table and its worker: transactions, claiming, leases, retries, restarts."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.config import to_async_url
from app.db import make_engine, make_sessionmaker, utcnow
from app.integrations.webhooks.sender import enqueue_call_event
from app.jobs import queue
from app.jobs.queue import Sessionmaker, backoff, claim, enqueue
from app.jobs.worker import JobWorker, PermanentFailure, RetryLater
from app.main import create_app
from app.models import Job, Project
from tests.conftest import TEST_SECRET
from tests.factories import api_key_for, verified_account

KIND = "test.work"


@pytest.fixture
async def maker(database_url: str) -> AsyncIterator[Sessionmaker]:
    engine = make_engine(to_async_url(database_url))
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def add_jobs(maker: Sessionmaker, count: int = 1, **fields: Any) -> list[uuid.UUID]:
    async with maker() as session:
        jobs = [
            await enqueue(session, kind=fields.pop("kind", KIND), payload={"n": n}, **fields)
            for n in range(count)
        ]
        await session.commit()
        return [job.id for job in jobs]


async def load(maker: Sessionmaker, job_id: uuid.UUID) -> Job:
    async with maker() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def settled(maker: Sessionmaker, job_id: uuid.UUID, status: str) -> Job:
    async def check() -> bool:
        return (await load(maker, job_id)).status == status

    await until(check)
    return await load(maker, job_id)


def worker(maker: Sessionmaker, handlers: dict[str, Any], **options: Any) -> JobWorker:
    defaults: dict[str, Any] = {
        "poll_interval": 0.05,
        "lease_seconds": 5.0,
        "retry_base_seconds": 0.01,
        "shutdown_grace_seconds": 1.0,
    }
    return JobWorker(maker, handlers, **{**defaults, **options})


# --- the queue --------------------------------------------------------------------------------


async def test_enqueue_belongs_to_the_callers_transaction(maker):
    async with maker() as session:
        await enqueue(session, kind=KIND, payload={"a": 1})
        await session.rollback()
    async with maker() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0

    (job_id,) = await add_jobs(maker)
    job = await load(maker, job_id)
    assert (job.status, job.attempts, job.max_attempts, job.payload) == ("queued", 0, 5, {"n": 0})


async def test_enqueue_many_belongs_to_the_callers_transaction(maker):
    def rows() -> list[dict[str, Any]]:
        return [
            queue.job_row(kind=KIND, payload={"n": n}, project_id=None, max_attempts=3)
            for n in range(5)
        ]

    async with maker() as session:
        await queue.enqueue_many(session, rows())
        await session.rollback()
    async with maker() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 0

    made = rows()
    async with maker() as session:
        await queue.enqueue_many(session, made)
        await queue.enqueue_many(session, [])  # an empty batch is allowed
        await session.commit()
    got = await claim(maker, limit=10, lease_seconds=30, kinds=[KIND])
    assert {job.id for job in got} == {row["id"] for row in made}
    assert sorted((job.payload["n"], job.attempts, job.max_attempts) for job in got) == [
        (n, 1, 3) for n in range(5)
    ]
    with pytest.raises(ValueError):
        queue.job_row(kind=KIND, payload={}, project_id=None, max_attempts=0)


async def test_concurrent_claimers_get_disjoint_jobs(maker):
    ids = set(await add_jobs(maker, 60))
    batches = await asyncio.gather(
        *(claim(maker, limit=20, lease_seconds=30, kinds=[KIND]) for _ in range(5))
    )
    claimed = [job.id for batch in batches for job in batch]
    assert len(claimed) == len(set(claimed)) == 60
    assert set(claimed) == ids
    assert all(job.attempts == 1 and job.status == "running" for b in batches for job in b)
    # Leased: nobody gets them again while the lease runs.
    assert await claim(maker, limit=100, lease_seconds=30) == []


async def test_claim_takes_due_jobs_of_the_given_kinds_oldest_first(maker):
    later = await add_jobs(maker, run_at=utcnow() + timedelta(hours=1))
    other = await add_jobs(maker, kind="test.other")
    due = await add_jobs(maker, 3)
    assert await claim(maker, limit=10, lease_seconds=30, kinds=[]) == []
    got = await claim(maker, limit=10, lease_seconds=30, kinds=[KIND])
    assert [job.id for job in got] == due
    assert [job.id for job in await claim(maker, limit=10, lease_seconds=30)] == other
    assert (await load(maker, later[0])).status == "queued"


async def test_an_expired_lease_is_reclaimed_and_the_old_holder_fenced_off(maker):
    (job_id,) = await add_jobs(maker)
    (stale,) = await claim(maker, limit=1, lease_seconds=0.05)
    await asyncio.sleep(0.1)
    # The first worker "crashed": its job runs again elsewhere.
    (fresh,) = await claim(maker, limit=1, lease_seconds=30)
    assert fresh.id == job_id and fresh.attempts == 2
    assert not await queue.complete(maker, stale)
    assert (await load(maker, job_id)).status == "running"
    assert await queue.complete(maker, fresh)
    assert (await load(maker, job_id)).status == "done"


async def test_a_lease_expiring_on_the_last_attempt_buries_the_job(maker, caplog):
    caplog.set_level(logging.ERROR, logger="talkstack.jobs")
    (job_id,) = await add_jobs(maker, max_attempts=1)
    await claim(maker, limit=1, lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert await claim(maker, limit=1, lease_seconds=30) == []
    w = worker(maker, {KIND: lambda job: asyncio.sleep(0)})
    await w.start()
    try:
        job = await settled(maker, job_id, "dead")
    finally:
        await w.stop()
    assert job.attempts == 1 and "lease expired" in (job.last_error or "")
    assert str(job_id) in caplog.text


def test_backoff_is_exponential_with_jitter_and_capped():
    for attempt, nominal in ((1, 10), (2, 20), (3, 40), (5, 160)):
        samples = {backoff(attempt, base=10) for _ in range(50)}
        assert all(0.8 * nominal <= s <= 1.2 * nominal for s in samples)
        assert len(samples) > 1
    assert backoff(30, base=10, cap=600) <= 720


# --- the worker -------------------------------------------------------------------------------


async def test_failing_job_is_retried_with_backoff_then_dead(maker, caplog):
    caplog.set_level(logging.INFO, logger="talkstack.jobs")
    times: list[float] = []

    async def boom(job: Job) -> None:
        times.append(time.monotonic())
        raise RuntimeError("boom")

    (job_id,) = await add_jobs(maker, max_attempts=4)
    w = worker(maker, {KIND: boom}, retry_base_seconds=0.1)
    await w.start()
    try:
        job = await settled(maker, job_id, "dead")
    finally:
        await w.stop()
    assert job.attempts == 4 and len(times) == 4
    assert job.last_error == "RuntimeError: boom"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.1, 0.2, 0.4 s (±20 %), plus polling.
    for gap, nominal in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert 0.8 * nominal <= gap <= 0.8 * nominal + 1.0
    assert gaps[2] > gaps[0]
    dead = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(dead) == 1
    assert str(job_id) in dead[0].getMessage() and KIND in dead[0].getMessage()
    assert "RuntimeError: boom" in dead[0].getMessage()


async def test_retry_later_and_permanent_failure(maker, caplog):
    caplog.set_level(logging.INFO, logger="talkstack.jobs")
    seen: dict[str, int] = {}

    async def handler(job: Job) -> None:
        mode = job.payload["mode"]
        seen[mode] = seen.get(mode, 0) + 1
        if mode == "busy-once" and job.attempts == 1:
            raise RetryLater(0.01, "busy, try again")
        if mode == "much-later":
            raise RetryLater(3600, "come back in an hour")
        if mode == "hopeless":
            raise PermanentFailure("the number does not exist")

    async with maker() as session:
        jobs = {
            mode: await enqueue(session, kind=KIND, payload={"mode": mode})
            for mode in ("busy-once", "much-later", "hopeless")
        }
        await session.commit()
    w = worker(maker, {KIND: handler})
    await w.start()
    try:
        busy = await settled(maker, jobs["busy-once"].id, "done")
        hopeless = await settled(maker, jobs["hopeless"].id, "dead")

        async def deferred() -> bool:
            return (await load(maker, jobs["much-later"].id)).attempts == 1

        await until(deferred)
        later = await settled(maker, jobs["much-later"].id, "queued")
    finally:
        await w.stop()
    assert busy.attempts == 2 and busy.last_error == "busy, try again"
    assert hopeless.attempts == 1 and hopeless.last_error == "the number does not exist"
    assert later.last_error == "come back in an hour"
    wait = (later.next_attempt_at - utcnow()).total_seconds()
    assert 3500 < wait <= 3600
    assert seen == {"busy-once": 2, "much-later": 1, "hopeless": 1}
    assert "the number does not exist" in caplog.text


async def _enqueue_many_one(maker: Sessionmaker) -> None:
    async with maker() as session:
        row = queue.job_row(kind=KIND, payload={}, project_id=None, max_attempts=1)
        await queue.enqueue_many(session, [row])
        await session.commit()


@pytest.mark.parametrize("add", [add_jobs, _enqueue_many_one], ids=["enqueue", "enqueue_many"])
async def test_commit_wakes_the_worker_at_once(maker, add):
    ran = asyncio.Event()

    async def handler(job: Job) -> None:
        ran.set()

    # Polling every 30 s: only the commit's wake-up can start the job quickly.
    w = worker(maker, {KIND: handler}, poll_interval=30.0)
    await w.start()
    try:
        await asyncio.sleep(0.1)
        await add(maker)
        await asyncio.wait_for(ran.wait(), 2.0)
    finally:
        await w.stop()


async def test_stop_finishes_quick_jobs_and_hands_back_slow_ones(maker):
    started: set[str] = set()

    async def handler(job: Job) -> None:
        started.add(job.payload["speed"])
        await asyncio.sleep(0.1 if job.payload["speed"] == "quick" else 60)

    async with maker() as session:
        quick = await enqueue(session, kind=KIND, payload={"speed": "quick"})
        slow = await enqueue(session, kind=KIND, payload={"speed": "slow"})
        await session.commit()
    w = worker(maker, {KIND: handler}, shutdown_grace_seconds=0.5)
    await w.start()
    assert w.running

    async def both_started() -> bool:
        return started == {"quick", "slow"}

    await until(both_started)
    stopping = time.monotonic()
    await w.stop()
    assert time.monotonic() - stopping < 3
    assert not w.running
    assert (await load(maker, quick.id)).status == "done"
    slow_row = await load(maker, slow.id)
    # Handed back as if never tried: due now, for the next worker.
    assert (slow_row.status, slow_row.attempts, slow_row.locked_until) == ("queued", 0, None)
    assert slow_row.next_attempt_at <= utcnow()
    await w.stop()  # twice is harmless


async def test_a_worker_only_claims_kinds_it_handles(maker):
    (foreign,) = await add_jobs(maker, kind="test.someone-else")
    (mine,) = await add_jobs(maker)
    w = worker(maker, {KIND: lambda job: asyncio.sleep(0)})
    await w.start()
    try:
        await settled(maker, mine, "done")
    finally:
        await w.stop()
    assert (await load(maker, foreign)).status == "queued"


async def test_housekeeping_runs_with_the_reaping_and_a_failing_chore_stops_nothing(maker):
    ran: list[str] = []

    async def broken() -> None:
        ran.append("broken")
        raise RuntimeError("the database said no")

    async def chore() -> None:
        ran.append("chore")

    (job,) = await add_jobs(maker)
    w = worker(maker, {KIND: lambda job: asyncio.sleep(0)}, lease_seconds=0.1,
               housekeeping=[broken, chore])  # fmt: skip
    await w.start()
    try:
        await settled(maker, job, "done")
        deadline = time.monotonic() + 5
        while ran.count("chore") < 2:  # at the start, then with every reaping
            assert time.monotonic() < deadline, ran
            await asyncio.sleep(0.02)
    finally:
        await w.stop()
    assert ran[:2] == ["broken", "chore"]


# --- the app: in-process worker, restarts, the separate worker process ------------------------

FAST = {
    "webhook_allow_private_hosts": True,
    "webhook_retry_base_seconds": 0.02,
    "job_poll_interval_seconds": 0.05,
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(FAST)


async def _project_with_webhook(app: Any, mailbox: Any, url: str) -> uuid.UUID:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        acct = await verified_account(client, mailbox)
        headers = {"x-api-key": await api_key_for(client, acct)}
        r = await client.post("/project/create-project", json={"name": "P"}, headers=headers)
        pid = r.json()["data"]["id"]
        r = await client.post(
            "/project/call-status/add-webhookurl",
            json={"projectId": pid, "webhookURL": url},
            headers=headers,
        )
        assert r.status_code == 200, r.text
    return uuid.UUID(pid)


async def _emit(app: Any, project_id: uuid.UUID) -> None:
    async with app.state.ctx.sessionmaker() as session:
        project = await session.get(Project, project_id)
        assert project is not None
        await enqueue_call_event(session, project=project, event="call.status", call={"n": 1})
        await session.commit()


async def test_the_app_runs_a_worker_unless_told_not_to(settings):
    for in_process in (True, False):
        application = create_app(settings.model_copy(update={"run_jobs_in_process": in_process}))
        async with application.router.lifespan_context(application):
            worker = application.state.ctx.worker
            assert (worker is not None and worker.running) is in_process


async def test_a_commit_through_the_api_engine_wakes_the_in_process_worker(
    settings, mailbox, receiver
):
    # The worker has a pool of its own; polling every 30 s, only the wake-up is fast enough.
    application = create_app(settings.model_copy(update={"job_poll_interval_seconds": 30.0}))
    async with application.router.lifespan_context(application):
        worker = application.state.ctx.worker
        assert worker is not None and worker.running
        project_id = await _project_with_webhook(application, mailbox, receiver.url)
        await asyncio.sleep(0.2)
        await _emit(application, project_id)
        await receiver.wait_for(1, within=2.0)


async def test_a_queued_event_survives_a_restart(settings, mailbox, receiver):
    # First life: the event is queued, and the server stops before anything sends it.
    first = create_app(settings.model_copy(update={"run_jobs_in_process": False}))
    async with first.router.lifespan_context(first):
        project_id = await _project_with_webhook(first, mailbox, receiver.url)
        await _emit(first, project_id)
    assert receiver.requests == 0
    # Second life: a new process (a new engine, a new worker) delivers it.
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        (delivery,) = await receiver.wait_for(1)
    assert b'"event":"call.status"' in delivery.body


async def test_a_job_held_by_a_crashed_worker_is_delivered_after_restart(
    settings, mailbox, receiver
):
    first = create_app(settings.model_copy(update={"run_jobs_in_process": False}))
    async with first.router.lifespan_context(first):
        project_id = await _project_with_webhook(first, mailbox, receiver.url)
        await _emit(first, project_id)
        # A worker claims it and dies before sending (the lease is never settled).
        (held,) = await claim(first.state.ctx.sessionmaker, limit=1, lease_seconds=0.3)
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        await receiver.wait_for(1)
        maker = second.state.ctx.sessionmaker
        job = await settled(maker, held.id, "done")
    assert job.attempts == 2 and receiver.requests == 1


@pytest.mark.slow
async def test_the_worker_console_script_delivers_and_stops_on_sigterm(
    settings, mailbox, receiver, tmp_path: Path
):
    api = create_app(settings.model_copy(update={"run_jobs_in_process": False}))
    async with api.router.lifespan_context(api):
        project_id = await _project_with_webhook(api, mailbox, receiver.url)
        await _emit(api, project_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SECRET_KEY"))}
    env.update(
        DATABASE_URL=settings.database_url,
        SECRET_KEY=TEST_SECRET,
        DATA_DIR=str(tmp_path / "data"),
        WEBHOOK_ALLOW_PRIVATE_HOSTS="true",
        JOB_POLL_INTERVAL_SECONDS="0.05",
    )
    script = Path(sys.executable).parent / "talkstack-worker"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(script)], env=env, cwd=tmp_path, stdout=out, stderr=out)  # noqa: ASYNC220, S603
        try:
            await receiver.wait_for(1, within=30)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, log.read_text()
    assert "job worker stopped" in log.read_text()
