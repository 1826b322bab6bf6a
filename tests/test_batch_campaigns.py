"""Batch campaigns: a call window, retries by outcome (each a new call), pause and resume.

Time is the dialer's clock, moved by the test (a window that opens tomorrow, a retry an hour
later); the jobs are run by hand in the order the worker would run them, once they are due by
that clock.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from app.batch import outcome
from app.batch.campaign import CallWindow
from app.batch.dialer import IDLE, BatchDialer, Claim, MemoryPacer
from app.batch.lifecycle import DIAL_JOB
from app.call.lifecycle import AMD_GRACE, OUTCOME_JOB
from app.db import utcnow
from app.jobs.queue import JobStatus
from app.models import Batch, BatchRow, Call, Job
from app.timefmt import iso_ms
from tests import test_batch
from tests.factories import api_key_for, assert_error, assert_validation_error, verified_account
from tests.test_batch import batch_rows, csv_of, dialed, finished, numbers, upload

# The batch tests' fixtures: Twilio's stand-in, fast jobs, an agent with a number.
settings_overrides = test_batch.settings_overrides
setup = test_batch.setup

MANUAL = pytest.mark.parametrize(
    "settings_overrides", [{"run_jobs_in_process": False}], indirect=True
)
NY = ZoneInfo("America/New_York")
WEEKDAYS = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:30",
            "timezone": "America/New_York"}  # fmt: skip


def rows_of(targets: list[str]) -> bytes:
    return csv_of([["number", "name", "topic"]] + [[n, "A", "B"] for n in targets])


async def run_jobs(app: Any, kind: str, *, at: datetime, dialer: BatchDialer | None = None) -> int:
    """Run the jobs of `kind` due by `at`, oldest first, as the worker would; return how many."""
    ctx = app.state.ctx
    handler = dialer if kind == DIAL_JOB else partial(outcome.decide, ctx)
    assert handler is not None
    for ran in range(50):
        async with ctx.sessionmaker() as s:
            job = await s.scalar(
                select(Job)
                .where(Job.kind == kind, Job.status == JobStatus.QUEUED, Job.next_attempt_at <= at)
                .order_by(Job.next_attempt_at)
                .limit(1)
            )
            if job is None:
                return ran
            job.status, job.attempts = JobStatus.RUNNING, job.attempts + 1
            await s.commit()
        await handler(job)
        async with ctx.sessionmaker() as s:
            await s.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.DONE))
            await s.commit()
    raise AssertionError(f"{kind} jobs keep coming")


async def queued_jobs(app: Any, kind: str) -> list[Job]:
    async with app.state.ctx.sessionmaker() as s:
        found = await s.scalars(select(Job).where(Job.kind == kind, Job.status == JobStatus.QUEUED))
        return list(found)


async def batch_calls(app: Any, batch_id: str) -> list[Call]:
    async with app.state.ctx.sessionmaker() as s:
        found = await s.scalars(
            select(Call).where(Call.batch_id == uuid.UUID(batch_id)).order_by(Call.created_at)
        )
        return list(found)


async def progress(client: Any, setup: Any, batch_id: str) -> dict[str, Any]:
    r = await client.get(f"/call/batch-call/{batch_id}", headers=setup.key)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def dial_at(app: Any, at: datetime) -> int:
    """Run the dial jobs due by `at`, with the dialer's clock at `at`."""
    dialer = BatchDialer(app.state.ctx, MemoryPacer(), lambda: at)
    return await run_jobs(app, DIAL_JOB, at=at, dialer=dialer)


async def end_call(client: Any, twilio_standin: Any, sid: str | None, status: str) -> None:
    assert sid is not None
    cb = twilio_standin.callback(sid, "status", CallStatus=status)
    assert (await twilio_standin.deliver(client, cb)).status_code == 204


def next_weekday(weekday: int, hour: int, minute: int = 0) -> datetime:
    """A time in New York on the given weekday (0: Monday), at least a week from now."""
    day = datetime.now(NY).date() + timedelta(days=7)
    while day.weekday() != weekday:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY).astimezone(UTC)


# -- upload -----------------------------------------------------------------------------------


@MANUAL
async def test_call_window_and_retry_are_taken_and_shown(client, setup):
    window = {**WEEKDAYS, "days": ["FRI", "mon", "wed"], "end": "24:00"}
    retry = {"no-answer": {"attempts": 3, "delaySeconds": 3600},
             "voicemail": {"attempts": 2, "delaySeconds": 86400}}  # fmt: skip
    r = await upload(
        client, setup, rows_of(numbers(2)), callWindow=json.dumps(window), retry=json.dumps(retry)
    )
    assert r.status_code == 200, r.text
    shown = {**window, "days": ["mon", "wed", "fri"]}
    created = r.json()["batch"]
    assert (created["callWindow"], created["retry"]) == (shown, retry)

    body = await progress(client, setup, created["id"])
    assert body["batch"]["callWindow"] == shown and body["batch"]["retry"] == retry
    assert body["batch"]["status"] == "running" and body["batch"]["outcomes"] == {}
    assert [(row["attempts"], row["outcome"], row["nextAttemptAt"]) for row in body["rows"]] == [
        (0, None, None),
        (0, None, None),
    ]


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"callWindow": "{not json"}, ["callWindow"]),
        ({"retry": "[1, 2]"}, ["retry"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "days": ["mon", "funday"]})}, ["callWindow.days"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "days": []})}, ["callWindow.days"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "start": "17:30"})}, ["callWindow.end"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "start": "22:00", "end": "06:00"})},
         ["callWindow.end"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "start": "9am", "end": "25:00"})},
         ["callWindow.start", "callWindow.end"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "timezone": "Mars/Olympus_Mons"})},
         ["callWindow.timezone"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "timezone": "America"})},  # a folder
         ["callWindow.timezone"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "timezone": "A" * 4000})},
         ["callWindow.timezone"]),
        ({"callWindow": json.dumps({k: v for k, v in WEEKDAYS.items() if k != "timezone"})},
         ["callWindow.timezone"]),
        ({"callWindow": json.dumps({**WEEKDAYS, "weekdays": ["mon"]})}, ["callWindow.weekdays"]),
        ({"retry": json.dumps({"no-answer": {"attempts": 0, "delaySeconds": 60}})},
         ["retry.no-answer.attempts"]),
        ({"retry": json.dumps({"busy": {"attempts": 11, "delaySeconds": 60}})},
         ["retry.busy.attempts"]),
        ({"retry": json.dumps({"busy": {"attempts": True, "delaySeconds": 60}})},
         ["retry.busy.attempts"]),
        ({"retry": json.dumps({"voicemail": {"attempts": 2, "delaySeconds": 59}})},
         ["retry.voicemail.delaySeconds"]),
        ({"retry": json.dumps({"voicemail": {"attempts": 2, "delaySeconds": 604801}})},
         ["retry.voicemail.delaySeconds"]),
        ({"retry": json.dumps({"completed": {"attempts": 2, "delaySeconds": 60}})},
         ["retry.completed"]),
        ({"retry": json.dumps({"busy": {"attempts": 2, "delay": 60}})},
         ["retry.busy.delay", "retry.busy.delaySeconds"]),
        # Every problem at once, in both fields.
        ({"callWindow": json.dumps({**WEEKDAYS, "timezone": "Nowhere"}),
          "retry": json.dumps({"busy": {"attempts": 99, "delaySeconds": 60}})},
         ["callWindow.timezone", "retry.busy.attempts"]),
    ],
)  # fmt: skip
async def test_invalid_campaign_fields_are_400_and_store_nothing(
    app, client, setup, fields, errors
):
    r = await upload(client, setup, rows_of(numbers(2)), **fields)
    body = assert_validation_error(r, *errors)
    assert {e["field"] for e in body["errors"]} == set(errors)
    async with app.state.ctx.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 0
        assert await s.scalar(select(func.count()).select_from(BatchRow)) == 0
        assert await s.scalar(select(func.count()).select_from(Job)) == 0


def test_the_window_opens_on_its_days_in_its_zone():
    window, errors = CallWindow.parse(WEEKDAYS)
    assert window is not None and not errors
    friday_close = next_weekday(4, 17, 30)  # open until 17:30, New York time
    assert window.is_open(friday_close - timedelta(seconds=1))
    assert not window.is_open(friday_close)
    monday = (friday_close.astimezone(NY) + timedelta(days=3)).replace(hour=9, minute=0)
    assert window.next_open(friday_close) == monday.astimezone(UTC)
    assert window.next_open(monday - timedelta(minutes=1)) == monday
    inside = monday + timedelta(hours=3)
    assert window.next_open(inside) == inside
    every_day, _ = CallWindow.parse({"start": "00:00", "end": "24:00", "timezone": "UTC"})
    assert every_day is not None and every_day.is_open(friday_close)


# -- the call window ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings_overrides",
    [{"run_jobs_in_process": False, "batch_slice_seconds": 10.0}],
    indirect=True,
)
async def test_rows_wait_for_the_window_and_dial_when_it_opens(app, client, setup, twilio_standin):
    targets = numbers(2)
    r = await upload(client, setup, rows_of(targets), callWindow=json.dumps(WEEKDAYS))
    batch_id = r.json()["batch"]["id"]
    sunday = next_weekday(6, 12)
    monday_open = next_weekday(0, 9)
    assert monday_open - sunday < timedelta(days=1)
    ctx = app.state.ctx

    started = time.monotonic()
    assert await dial_at(app, sunday) == 1
    # The job ends at once instead of waiting out its slice.
    assert time.monotonic() - started < ctx.settings.batch_slice_seconds / 2
    assert twilio_standin.created_calls == []
    # The next slice waits for Monday 09:00 in New York; nothing runs before.
    (job,) = await queued_jobs(app, DIAL_JOB)
    assert job.next_attempt_at == monday_open
    just_before = monday_open - timedelta(seconds=1)
    dialer = BatchDialer(ctx, MemoryPacer(), lambda: just_before)
    assert await dialer.claim(uuid.UUID(batch_id)) == IDLE
    assert await run_jobs(app, DIAL_JOB, at=just_before, dialer=dialer) == 0
    body = await progress(client, setup, batch_id)
    assert body["batch"]["status"] == "running" and body["batch"]["counts"]["queued"] == 2

    opened = monday_open + timedelta(seconds=30)
    dialer = BatchDialer(ctx, MemoryPacer(), lambda: opened)
    assert await run_jobs(app, DIAL_JOB, at=opened, dialer=dialer) == 1
    assert dialed(twilio_standin) == Counter(targets)
    body = await progress(client, setup, batch_id)
    assert body["batch"]["status"] == "completed"
    assert [row["attempts"] for row in body["rows"]] == [1, 1]


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["no-answer", "busy"])
@MANUAL
async def test_an_outcome_is_called_again_after_the_delay_up_to_its_attempts(
    app, client, setup, twilio_standin, status
):
    target, other = numbers(2)
    retry = {status: {"attempts": 3, "delaySeconds": 600}}
    r = await upload(client, setup, rows_of([target, other]), retry=json.dumps(retry))
    batch_id = r.json()["batch"]["id"]
    ctx = app.state.ctx
    now = utcnow()
    await dial_at(app, now)
    assert dialed(twilio_standin) == Counter([target, other])
    first, done = await batch_calls(app, batch_id)
    if first.to_number != target:
        first, done = done, first
    await end_call(client, twilio_standin, done.call_sid, "completed")
    await end_call(client, twilio_standin, first.call_sid, status)
    assert await run_jobs(app, OUTCOME_JOB, at=utcnow() + AMD_GRACE * 2) == 2
    (waiting,) = [r for r in await batch_rows(app, batch_id) if r.number == target]
    # A job runs at least once: deciding the same call again changes nothing.
    async with ctx.sessionmaker() as s, s.begin():
        await s.execute(update(Job).where(Job.kind == OUTCOME_JOB).values(status=JobStatus.QUEUED))
    assert await run_jobs(app, OUTCOME_JOB, at=utcnow() + AMD_GRACE * 2) == 2
    (again,) = [r for r in await batch_rows(app, batch_id) if r.number == target]
    assert (again.state, again.next_attempt_at) == ("queued", waiting.next_attempt_at)
    assert len(await queued_jobs(app, DIAL_JOB)) == 1

    body = await progress(client, setup, batch_id)
    assert body["batch"]["status"] == "running"
    row = next(row for row in body["rows"] if row["number"] == target)
    assert (row["state"], row["attempts"], row["outcome"], row["callSid"]) == (
        "queued",
        1,
        None,
        None,
    )
    retry_at = waiting.next_attempt_at
    assert retry_at is not None and row["nextAttemptAt"] == iso_ms(retry_at)
    assert timedelta(seconds=590) < retry_at - now < timedelta(seconds=620)
    assert body["batch"]["outcomes"] == {"completed": 1}
    # Not before the delay: the dial job sleeps until then.
    early = retry_at - timedelta(seconds=1)
    assert await dial_at(app, early) == 0
    (job,) = await queued_jobs(app, DIAL_JOB)
    assert job.next_attempt_at == retry_at

    # The second call is claimed, and the server dies before Twilio answers. Twilio lists the
    # first call to that number (placed minutes ago): it is not this claim's call.
    later = retry_at + timedelta(seconds=1)
    dialer = BatchDialer(ctx, MemoryPacer(), lambda: later)
    claim = await dialer.claim(uuid.UUID(batch_id))
    assert isinstance(claim, Claim) and claim.call_id != first.id
    async with ctx.sessionmaker() as s, s.begin():
        stale = await s.get(BatchRow, claim.row_id)
        assert stale is not None and stale.state == "dialing"
        stale.claimed_at -= dialer.stale_after
    await dialer.reconcile_stale(uuid.UUID(batch_id))
    (stale,) = [r for r in await batch_rows(app, batch_id) if r.number == target]
    assert (stale.state, stale.call_id, stale.call_sid) == ("queued", claim.call_id, None)

    for attempt in (2, 3):
        at = utcnow() + timedelta(seconds=601 * attempt)
        assert await dial_at(app, at) >= 1
        calls = [c for c in await batch_calls(app, batch_id) if c.to_number == target]
        assert len(calls) == attempt and calls[-1].call_sid not in {c.call_sid for c in calls[:-1]}
        await end_call(client, twilio_standin, calls[-1].call_sid, status)
        await run_jobs(app, OUTCOME_JOB, at=at)

    assert dialed(twilio_standin) == Counter({target: 3, other: 1})
    calls = [c for c in await batch_calls(app, batch_id) if c.to_number == target]
    assert [c.status for c in calls] == [status] * 3
    assert calls[1].id == claim.call_id  # the unplaced claim's call row was dialed at last
    body = await progress(client, setup, batch_id)
    row = next(row for row in body["rows"] if row["number"] == target)
    assert (row["state"], row["attempts"], row["outcome"]) == ("dialed", 3, status)
    assert row["callSid"] == calls[-1].call_sid
    assert body["batch"]["status"] == "completed"
    assert body["batch"]["outcomes"] == {"completed": 1, status: 1}
    assert await queued_jobs(app, DIAL_JOB) == []


@MANUAL
async def test_a_call_that_ends_before_its_claim_is_settled_is_decided_once_it_is(
    app, client, setup, twilio_standin
):
    # The server asked Twilio and died; the call rang out (no-answer) before the restarted
    # server adopted it. The outcome waits for the adoption, then the row is called again.
    retry = {"no-answer": {"attempts": 2, "delaySeconds": 60}}
    r = await upload(client, setup, rows_of(numbers(1)), retry=json.dumps(retry))
    batch_id = uuid.UUID(r.json()["batch"]["id"])
    ctx = app.state.ctx
    dialer = BatchDialer(ctx, MemoryPacer())
    claim = await dialer.claim(batch_id)
    assert isinstance(claim, Claim)
    placed = await dialer.place(claim)  # Twilio places it; the server dies before storing it
    await end_call(client, twilio_standin, placed.sid, "no-answer")
    assert await run_jobs(app, OUTCOME_JOB, at=utcnow()) == 1
    (row,) = await batch_rows(app, str(batch_id))
    assert (row.state, row.call_attempts) == ("dialing", 1)  # not decided yet

    async with ctx.sessionmaker() as s, s.begin():
        stale = await s.get(BatchRow, claim.row_id)
        assert stale is not None and stale.claimed_at is not None
        stale.claimed_at -= dialer.stale_after
    await dialer.reconcile_stale(batch_id)
    assert await run_jobs(app, OUTCOME_JOB, at=utcnow()) == 1
    (row,) = await batch_rows(app, str(batch_id))
    assert (row.state, row.call_id, row.outcome) == ("queued", None, "no-answer")
    at = utcnow() + timedelta(seconds=61)
    await dial_at(app, at)
    assert len(twilio_standin.call_sids) == 2  # the adopted call, then one new call


@MANUAL
async def test_voicemail_by_the_amd_verdict_after_completed_is_called_again(
    app, client, setup, twilio_standin
):
    target = numbers(1)[0]
    retry = {"voicemail": {"attempts": 2, "delaySeconds": 60}}
    r = await upload(client, setup, rows_of([target]), retry=json.dumps(retry))
    batch_id = r.json()["batch"]["id"]
    now = utcnow()
    await dial_at(app, now)
    (call,) = await batch_calls(app, batch_id)
    await end_call(client, twilio_standin, call.call_sid, "completed")
    # `completed` is decided only after the AMD verdict could have come.
    (pending,) = await queued_jobs(app, OUTCOME_JOB)
    assert pending.next_attempt_at >= now + AMD_GRACE
    assert await run_jobs(app, OUTCOME_JOB, at=utcnow()) == 0
    amd = twilio_standin.callback(call.call_sid, "amd", AnsweredBy="machine_end_beep")
    assert (await twilio_standin.deliver(client, amd)).status_code == 204
    assert await run_jobs(app, OUTCOME_JOB, at=utcnow() + AMD_GRACE * 2) == 2

    (row,) = await batch_rows(app, batch_id)
    assert (row.state, row.call_id, row.call_attempts) == ("queued", None, 1)
    at = utcnow() + timedelta(seconds=61)
    await dial_at(app, at)
    first, second = await batch_calls(app, batch_id)
    assert first.status == "voicemail" and second.call_sid not in (None, first.call_sid)
    amd = twilio_standin.callback(second.call_sid, "amd", AnsweredBy="machine_end_beep")
    assert (await twilio_standin.deliver(client, amd)).status_code == 204
    await end_call(client, twilio_standin, second.call_sid, "completed")
    await run_jobs(app, OUTCOME_JOB, at=utcnow() + AMD_GRACE * 2)

    body = await progress(client, setup, batch_id)
    (shown,) = body["rows"]
    assert (shown["attempts"], shown["outcome"], shown["callSid"]) == (
        2,
        "voicemail",
        second.call_sid,
    )
    assert body["batch"]["status"] == "completed"
    assert dialed(twilio_standin) == Counter({target: 2})


@MANUAL
async def test_a_row_waiting_for_a_retry_is_canceled_with_its_last_outcome(
    app, client, setup, twilio_standin
):
    retry = {"busy": {"attempts": 2, "delaySeconds": 60}}
    r = await upload(client, setup, rows_of(numbers(1)), retry=json.dumps(retry))
    batch_id = r.json()["batch"]["id"]
    now = utcnow()
    await dial_at(app, now)
    (call,) = await batch_calls(app, batch_id)
    await end_call(client, twilio_standin, call.call_sid, "busy")
    await run_jobs(app, OUTCOME_JOB, at=utcnow())

    r = await client.post(f"/call/batch-call/{batch_id}/cancel", headers=setup.key)
    assert r.status_code == 200 and r.json()["batch"]["outcomes"] == {"busy": 1}
    body = await progress(client, setup, batch_id)
    (row,) = body["rows"]
    assert (row["state"], row["attempts"], row["outcome"]) == ("canceled", 1, "busy")
    at = now + timedelta(seconds=120)
    await dial_at(app, at)
    assert len(twilio_standin.call_sids) == 1


# -- pause and resume ------------------------------------------------------------------------


@MANUAL
async def test_pause_stops_new_dials_and_resume_goes_on(
    app, client, setup, mailbox, twilio_standin
):
    targets = numbers(3)
    r = await upload(client, setup, rows_of(targets))
    batch_id = r.json()["batch"]["id"]
    r = await client.post(f"/call/batch-call/{batch_id}/pause", headers=setup.key)
    assert r.status_code == 200 and r.json()["message"] == "batch paused."
    assert r.json()["batch"]["status"] == "paused"
    r = await client.post(f"/call/batch-call/{batch_id}/pause", headers=setup.key)
    assert r.status_code == 200  # pausing twice is harmless
    now = utcnow()
    dialer = BatchDialer(app.state.ctx, MemoryPacer(), lambda: now)
    assert await run_jobs(app, DIAL_JOB, at=now, dialer=dialer) == 1
    assert twilio_standin.created_calls == [] and await queued_jobs(app, DIAL_JOB) == []
    assert (await progress(client, setup, batch_id))["batch"]["status"] == "paused"

    r = await client.post(f"/call/batch-call/{batch_id}/resume", headers=setup.key)
    assert r.status_code == 200 and r.json()["batch"]["status"] == "running"
    r = await client.post(f"/call/batch-call/{batch_id}/resume", headers=setup.key)
    assert r.status_code == 200  # as is resuming a running batch: still one dial job
    assert len(await queued_jobs(app, DIAL_JOB)) == 1
    assert await run_jobs(app, DIAL_JOB, at=utcnow(), dialer=dialer) == 1
    assert dialed(twilio_standin) == Counter(targets)
    assert (await progress(client, setup, batch_id))["batch"]["status"] == "completed"
    for action in ("pause", "resume"):
        r = await client.post(f"/call/batch-call/{batch_id}/{action}", headers=setup.key)
        assert_error(r, 409, "BATCH_FINISHED")

    r = await upload(client, setup, rows_of(numbers(1, start=2000)))
    other = r.json()["batch"]["id"]
    await client.post(f"/call/batch-call/{other}/pause", headers=setup.key)
    r = await client.post(f"/call/batch-call/{other}/cancel", headers=setup.key)
    assert r.status_code == 200 and r.json()["batch"]["counts"]["canceled"] == 1
    r = await client.post(f"/call/batch-call/{other}/resume", headers=setup.key)
    assert_error(r, 409, "BATCH_CANCELED")
    stranger = {"x-api-key": await api_key_for(client, await verified_account(client, mailbox))}
    for action in ("pause", "resume"):
        r = await client.post(f"/call/batch-call/{other}/{action}", headers=stranger)
        missing = await client.post(f"/call/batch-call/{uuid.uuid4()}/{action}", headers=stranger)
        assert_error(r, 404, "BATCH_NOT_FOUND")
        assert r.json() == missing.json()


@pytest.mark.parametrize("settings_overrides", [{"batch_calls_per_second": 4.0}], indirect=True)
async def test_pause_and_resume_with_the_worker_dial_each_row_once(
    app, client, setup, twilio_standin
):
    targets = numbers(8)
    r = await upload(client, setup, rows_of(targets))
    batch_id = r.json()["batch"]["id"]
    await asyncio.sleep(0.3)
    r = await client.post(f"/call/batch-call/{batch_id}/pause", headers=setup.key)
    assert r.status_code == 200
    # A claim made before the pause may still be dialing: let it settle.
    deadline = time.monotonic() + 10
    while any(row.state == "dialing" for row in await batch_rows(app, batch_id)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    placed = len(twilio_standin.call_sids)
    await asyncio.sleep(1.0)
    assert len(twilio_standin.call_sids) == placed < len(targets)
    r = await client.post(f"/call/batch-call/{batch_id}/resume", headers=setup.key)
    assert r.status_code == 200
    body = await finished(client, setup, batch_id)
    assert body["batch"]["status"] == "completed"
    assert dialed(twilio_standin) == Counter(targets)


# -- a client that knows nothing of campaigns ----------------------------------------------------


async def test_an_upload_without_campaign_fields_works_as_before(
    app, client, setup, twilio_standin
):
    targets = numbers(3)
    r = await upload(client, setup, rows_of(targets))
    assert r.status_code == 200, r.text
    assert r.json()["batch"]["callWindow"] is None and r.json()["batch"]["retry"] is None
    batch_id = r.json()["batch"]["id"]
    body = await finished(client, setup, batch_id)
    # Completed once every row is dialed, as before: outcomes do not hold it.
    assert body["batch"]["status"] == "completed" and body["batch"]["counts"]["dialed"] == 3
    assert [row["outcome"] for row in body["rows"]] == [None, None, None]
    calls = {c.to_number: c for c in await batch_calls(app, batch_id)}
    await end_call(client, twilio_standin, calls[targets[0]].call_sid, "no-answer")
    await end_call(client, twilio_standin, calls[targets[1]].call_sid, "busy")
    deadline = time.monotonic() + 10
    while True:
        body = await progress(client, setup, batch_id)
        if body["batch"]["outcomes"] == {"no-answer": 1, "busy": 1} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [(row["attempts"], row["outcome"]) for row in body["rows"]] == [
        (1, "no-answer"), (1, "busy"), (1, None),
    ]  # fmt: skip
    assert dialed(twilio_standin) == Counter(targets)  # no retry without rules
    assert body["batch"]["callWindow"] is None and body["batch"]["retry"] is None
