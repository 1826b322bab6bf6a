"""Dialing a batch: paced, capped, exactly once per row, through a restart.

A `batch.dial` job works on one batch for a slice of time, then queues its own continuation.
For each row:

1. **Claim** (one transaction, the project's row locked so claims of one project take turns):
   check the batch is running and the project has fewer than BATCH_MAX_CONCURRENT_CALLS calls
   live, take the next queued row in file order, write its call row, mark the row `dialing`.
2. **Pace**: wait for the project's next dialing slot (BATCH_CALLS_PER_SECOND), shared by every
   process through Redis when REDIS_URL is set (in memory otherwise).
3. **Dial**, then store the Call SID at once (`dialed`). Twilio refusing the number: `failed`.
   Twilio unreachable or timing out: the outcome is unknown, so Twilio is asked for calls to
   that number since the claim; one found is adopted, none means the row is dialed again later
   (with backoff, at most BATCH_DIAL_MAX_ATTEMPTS times).

Campaigns (app/batch/campaign.py): outside the batch's call window, and while every row left
waits for a retry's time, a slice ends at once and its continuation is queued for when a row can
next be dialed; a batch whose remaining rows all wait for their calls' outcomes has no dial job
until an outcome queues a row again (app/batch/outcome.py). Each batch has one current dial job
(`Batch.dial_job_id`): any other (a rerun after a crash, a superseded one) stops at once.

After a crash (kill -9) rows can be left `dialing` with no SID: the next slice (after the dead
worker's job lease expires) reconciles them the same way, once a claim is older than a slow
Twilio could take to place its call. A Call SID that Twilio's status callback stored on the
row's call (it often arrives before Twilio's answer does) is that claim's call and is adopted
as it is; otherwise the first call Twilio lists to the number from the agent's number since the
claim (less a minute: clocks differ, Twilio's dates are whole seconds) that no other call row
holds. A row is never dialed blindly twice: a row queued again adopts, instead of dialing, a
call whose callback came after all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import coredis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.agent.schemas import MAX_CALL_SECONDS
from app.batch import lifecycle
from app.batch.campaign import CallWindow
from app.batch.lifecycle import UNDECIDED, RowState
from app.call import lifecycle as lifecycle_of_call
from app.call.lifecycle import CHECK_GRACE, RING_SECONDS, outcome_job, schedule_check
from app.call.render import missing_variables, render
from app.call.service import callback_url, hubspot_properties
from app.call.status import FINAL, CallStatus
from app.config import Settings
from app.context import AppContext
from app.db import utcnow
from app.errors import AppError
from app.hubspot import service as hubspot_service
from app.integrations.twilio.errors import TelephonyNotConfigured, TwilioRejected
from app.integrations.twilio.types import PlacedCall
from app.jobs.queue import enqueue_many
from app.models import Agent, Batch, BatchRow, BatchStatus, Call, Job, Project
from app.phone_number.service import number_of_agent

log = logging.getLogger("talkstack.batch.dialer")

LIVE_STATUSES = (
    CallStatus.QUEUED,
    CallStatus.INITIATED,
    CallStatus.RINGING,
    CallStatus.IN_PROGRESS,
)
# A call that never told us its end stops counting as live once no call can still be going:
# ringing, the longest call an agent may take, and the grace after which its final-status
# check (app/call/jobs.py) has asked Twilio.
LIVE_WINDOW = timedelta(seconds=RING_SECONDS + MAX_CALL_SECONDS) + CHECK_GRACE
# Twilio may create a call a little before or after our clock says we asked.
CLOCK_SKEW = timedelta(seconds=60)


class Pacer(Protocol):
    async def wait_time(self, key: str, interval: float) -> float:
        """Reserve the next slot of `key`, `interval` seconds after the previous one; return
        how long to wait for it."""

    async def aclose(self) -> None: ...


class MemoryPacer:
    """Slots kept in this process (one server process)."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}

    async def wait_time(self, key: str, interval: float) -> float:
        now = time.time()
        slot = max(now, self._next.get(key, 0.0))
        self._next[key] = slot + interval
        return slot - now

    async def aclose(self) -> None:
        return None


# Atomic in Redis, on Redis's clock: every process and host shares one sequence of slots.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local ttl = math.ceil((slot + interval - now) * 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', ttl)
return string.format('%.6f', slot - now)
"""


class RedisPacer:
    def __init__(self, url: str) -> None:
        self._pool = coredis.ConnectionPool.from_url(url)
        self._client: coredis.Redis[bytes] = coredis.Redis(connection_pool=self._pool)

    async def wait_time(self, key: str, interval: float) -> float:
        raw = await self._client.eval(
            _RESERVE, keys=[f"talkstack:dial-pace:{key}"], args=[interval]
        )
        return float(raw.decode() if isinstance(raw, bytes) else str(raw))

    async def aclose(self) -> None:
        self._pool.disconnect()


def build_pacer(settings: Settings) -> Pacer:
    return RedisPacer(settings.redis_url) if settings.redis_url else MemoryPacer()


@dataclass
class Claim:
    row_id: uuid.UUID
    call_id: uuid.UUID
    project_id: uuid.UUID
    to: str
    from_: str
    max_seconds: int
    claimed_at: datetime
    # The agent leaves a voicemail message: machine detection waits for the greeting's end.
    voicemail: bool = False


@dataclass
class Resolve:
    """The next row names a HubSpot contact: read its number before claiming it."""

    row_id: uuid.UUID


AGAIN = "again"  # the row needed no dial (adopted): claim the next one at once
BUSY = "busy"  # nothing to dial right now (the cap is reached, or a claim is being settled)
IDLE = "idle"  # nothing to dial before later: the call window is closed, or rows wait for a time
DONE = "done"  # the batch has nothing left to dial (or is not running)


class BatchDialer:
    """The `batch.dial` job handler."""

    def __init__(
        self, ctx: AppContext, pacer: Pacer, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.ctx = ctx
        self.pacer = pacer
        # The time call windows and retry times are read by (tests move it).
        self.clock = clock
        settings = ctx.settings
        self.interval = 1.0 / settings.batch_calls_per_second
        self.max_live = settings.batch_max_concurrent_calls
        self.slice_seconds = settings.batch_slice_seconds
        self.max_attempts = settings.batch_dial_max_attempts
        self.retry_base = settings.batch_retry_base_seconds
        # A claim this old with no SID is from a dial that died (Twilio's timeout, with room).
        self.stale_after = timedelta(seconds=2 * settings.twilio_timeout_seconds + 5)

    async def __call__(self, job: Job) -> None:
        batch_id = uuid.UUID(job.payload["batch_id"])
        async with self.ctx.sessionmaker() as session:
            batch = await session.get(Batch, batch_id)
        if batch is None or batch.dial_job_id not in (None, job.id):
            return  # superseded: another job carries the batch on
        await self.reconcile_stale(batch_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.slice_seconds
        dials: set[asyncio.Task[None]] = set()
        try:
            while loop.time() < deadline:
                claim = await self.claim(batch_id)
                if claim in (DONE, IDLE):
                    break
                if claim == BUSY:
                    await asyncio.sleep(min(0.5, max(self.interval, 0.05)))
                    continue
                if claim == AGAIN:
                    continue
                if isinstance(claim, Resolve):
                    await self.resolve(claim.row_id)
                    continue
                assert isinstance(claim, Claim)
                wait = await self.pacer.wait_time(str(claim.project_id), self.interval)
                if wait > 0:
                    await asyncio.sleep(wait)
                task = asyncio.create_task(self.dial(claim))
                dials.add(task)
                task.add_done_callback(dials.discard)
        finally:
            if dials:
                await asyncio.gather(*dials, return_exceptions=True)
        await self.next_slice(batch_id, job.id)

    async def next_slice(self, batch_id: uuid.UUID, job_id: uuid.UUID) -> None:
        """Queue the batch's next slice for when a row can next be dialed (any worker may take
        it), or complete the batch, or (paused, or every row waiting for its call's outcome)
        leave it with no dial job."""
        now = self.clock()
        async with self.ctx.sessionmaker() as session, session.begin():
            batch = await session.get(Batch, batch_id, with_for_update=True)
            if batch is None or batch.dial_job_id not in (None, job_id):
                return
            batch.dial_job_id = None
            wake = None
            if batch.status == BatchStatus.RUNNING:
                wake = await lifecycle.next_dial_time(session, batch, now)
            if wake is None:
                await lifecycle.finish_if_done(session, batch, utcnow())
                return
            await lifecycle.wake_dialer(session, batch, wake)

    # -- claiming ---------------------------------------------------------------------------

    async def claim(self, batch_id: uuid.UUID) -> Claim | Resolve | str:
        now = utcnow()
        at = self.clock()
        async with self.ctx.sessionmaker() as session, session.begin():
            # Locked: a claim never crosses a pause or cancel that has committed.
            batch = await session.get(Batch, batch_id, with_for_update=True)
            if batch is None or batch.status != BatchStatus.RUNNING:
                return DONE
            window = CallWindow.load(batch.call_window)
            if window is not None and not window.is_open(at):
                return IDLE
            # Claims of one project take turns (the live-call count must hold).
            await session.get(Project, batch.project_id, with_for_update=True)
            live = await session.scalar(
                select(func.count())
                .select_from(Call)
                .where(
                    Call.project_id == batch.project_id,
                    Call.status.in_(LIVE_STATUSES),
                    Call.created_at > now - LIVE_WINDOW,
                )
            )
            if (live or 0) >= self.max_live:
                return BUSY
            pick = (
                select(BatchRow)
                .where(
                    BatchRow.batch_id == batch_id,
                    BatchRow.state == RowState.QUEUED,
                    (BatchRow.next_attempt_at.is_(None)) | (BatchRow.next_attempt_at <= at),
                )
                .order_by(BatchRow.row)
                .limit(1)
            )
            if session.get_bind().dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            row = (await session.execute(pick)).scalar_one_or_none()
            if row is None:
                pending = set(
                    (
                        await session.scalars(
                            select(BatchRow.state)
                            .where(
                                BatchRow.batch_id == batch_id,
                                BatchRow.state.in_(UNDECIDED),
                            )
                            .distinct()
                        )
                    ).all()
                )
                if RowState.DIALING in pending:
                    return BUSY
                return IDLE if pending else DONE
            if row.hubspot_contact_id and not row.number:
                return Resolve(row.id)
            agent = await session.get(Agent, batch.agent_id)
            from_ = await number_of_agent(session, batch.agent_id) if agent else None
            if agent is None or agent.is_deleted or from_ is None:
                row.state = RowState.FAILED
                row.error = "The agent has no phone number to call from any more."
                return BUSY
            call = await session.get(Call, row.call_id) if row.call_id else None
            if call is not None and call.call_sid is not None:
                # Queued again, yet Twilio's callback for the earlier attempt has come since:
                # that attempt was placed after all. Adopt it; never dial the row twice.
                log.info("batch row %s: Twilio had placed %s; adopted", row.id, call.call_sid)
                await self._adopt(session, row, call, call.call_sid)
                return AGAIN
            if call is None:
                call = lifecycle_of_call.outbound(
                    user_id=batch.user_id,
                    project_id=batch.project_id,
                    agent=agent,
                    batch_id=batch.id,
                    hubspot_contact_id=row.hubspot_contact_id,
                    to=row.number,
                    from_=from_,
                    variables=dict(row.variables),
                    system_instruction=render(agent.system_instruction, row.variables) or "",
                    first_message=render(agent.first_message, row.variables),
                )
                session.add(call)
                await session.flush()
                row.call_attempts += 1
                row.outcome = None
            row.state = RowState.DIALING
            row.claimed_at = now
            row.attempts += 1
            row.call_id = call.id
            return Claim(
                row_id=row.id,
                call_id=call.id,
                project_id=batch.project_id,
                to=row.number,
                from_=call.from_number,
                max_seconds=agent.max_call_duration_seconds,
                claimed_at=now,
                voicemail=bool(agent.voicemail_message),
            )

    async def resolve(self, row_id: uuid.UUID) -> None:
        """A HubSpot row: its contact's number and properties (`hubspot.*` variables), or the
        row fails with HubSpot's reason. Kept even when HubSpot refused the token (the
        connection is then marked broken)."""
        async with self.ctx.sessionmaker() as session:
            row = await session.get(BatchRow, row_id, with_for_update=True)
            batch = await session.get(Batch, row.batch_id) if row else None
            project = await session.get(Project, batch.project_id) if batch else None
            agent = await session.get(Agent, batch.agent_id) if batch else None
            if row is None or project is None or agent is None or row.state != RowState.QUEUED:
                return
            try:
                number, variables = await hubspot_service.resolve_contact(
                    self.ctx,
                    session,
                    project=project,
                    contact_id=row.hubspot_contact_id or "",
                    properties=hubspot_properties(agent),
                )
            except AppError as exc:
                row.state, row.error = RowState.FAILED, exc.message
                await session.commit()
                return
            merged = {**variables, **row.variables}
            missing = missing_variables(
                [agent.system_instruction, agent.first_message, agent.voicemail_message], merged
            )
            if missing:
                row.state, row.error = RowState.FAILED, f"missing variables: {', '.join(missing)}"
            else:
                row.number, row.variables = number, merged
            await session.commit()

    # -- dialing ----------------------------------------------------------------------------

    async def dial(self, claim: Claim) -> None:
        try:
            placed = await self.place(claim)
        except TelephonyNotConfigured:
            await self._unknown(claim, "Twilio is not configured")
            return
        except TwilioRejected as exc:
            await self._refused(claim, exc)
            return
        except (AppError, OSError) as exc:
            await self._unknown(claim, getattr(exc, "message", str(exc)))
            return
        await self._dialed(claim, placed.sid)

    async def place(self, claim: Claim) -> PlacedCall:
        """Ask Twilio for the claim's call (nothing stored: `dial` records the outcome)."""
        ctx = self.ctx
        return await ctx.telephony.create_call(
            to=claim.to,
            from_=claim.from_,
            twiml_url=callback_url(ctx, claim.call_id, "twiml"),
            status_callback=callback_url(ctx, claim.call_id, "status"),
            recording_status_callback=callback_url(ctx, claim.call_id, "recording"),
            amd_callback=callback_url(ctx, claim.call_id, "amd"),
            time_limit_seconds=claim.max_seconds,
            detect_message_end=claim.voicemail,
        )

    async def _dialed(self, claim: Claim, sid: str) -> None:
        async with self.ctx.sessionmaker() as session, session.begin():
            # Row, then call: the order `reconcile` locks them in (two orders could deadlock).
            row = await session.get(BatchRow, claim.row_id, with_for_update=True)
            call = await session.get(Call, claim.call_id, with_for_update=True)
            if call is not None:
                if call.call_sid is None:
                    call.call_sid = sid
                elif call.call_sid != sid:
                    log.error(
                        "batch row %s dialed twice: %s, then %s", claim.row_id, call.call_sid, sid
                    )
                await schedule_check(session, call, max_seconds=claim.max_seconds)
            if row is not None and row.call_id == claim.call_id:
                row.state, row.call_sid = RowState.DIALED, sid
                row.error, row.next_attempt_at = None, None
                if call is not None:
                    await _decide_if_ended(session, call)

    async def _refused(self, claim: Claim, exc: AppError) -> None:
        async with self.ctx.sessionmaker() as session, session.begin():
            row = await session.get(BatchRow, claim.row_id, with_for_update=True)
            call = await session.get(Call, claim.call_id, with_for_update=True)
            if call is not None:
                await lifecycle_of_call.refused(session, call, exc)
            if row is not None and row.call_id == claim.call_id:
                row.state, row.error, row.outcome = RowState.FAILED, exc.message, CallStatus.FAILED
        log.info("batch row %s refused by Twilio: %s", claim.row_id, exc.message)

    async def _unknown(self, claim: Claim, reason: str) -> None:
        """Twilio may or may not have placed the call: ask it, and never dial again before a
        slow Twilio could have finished placing it (`stale_after`)."""
        log.warning("batch row %s: dial outcome unknown (%s); reconciling", claim.row_id, reason)
        try:
            await self.reconcile(claim.row_id, reason, may_requeue=False)
        except Exception:
            # Twilio still unreachable: the row stays `dialing`; a later slice reconciles it.
            log.warning("batch row %s: reconciling failed; will retry", claim.row_id, exc_info=True)

    # -- reconciling --------------------------------------------------------------------------

    async def reconcile_stale(self, batch_id: uuid.UUID) -> None:
        cutoff = utcnow() - self.stale_after
        async with self.ctx.sessionmaker() as session:
            stale = list(
                (
                    await session.scalars(
                        select(BatchRow.id).where(
                            BatchRow.batch_id == batch_id,
                            BatchRow.state == RowState.DIALING,
                            BatchRow.claimed_at < cutoff,
                        )
                    )
                ).all()
            )
        for row_id in stale:
            try:
                await self.reconcile(row_id, "the dial's outcome was unknown")
            except Exception:
                log.warning("batch row %s: reconciling failed; will retry", row_id, exc_info=True)

    async def reconcile(self, row_id: uuid.UUID, reason: str, *, may_requeue: bool = True) -> None:
        """Adopt the call Twilio placed for this claim, or (`may_requeue`) queue the row again."""
        telephony = self.ctx.telephony
        async with self.ctx.sessionmaker() as session:
            row = await session.get(BatchRow, row_id)
            if row is None or row.state != RowState.DIALING or row.claimed_at is None:
                return
            call = await session.get(Call, row.call_id) if row.call_id else None
            since = row.claimed_at - CLOCK_SKEW
            number, from_ = row.number, call.from_number if call else None
        found: list[Any] = []
        with contextlib.suppress(TelephonyNotConfigured):  # then nothing was placed
            placed = await telephony.list_calls(to=number, from_=from_, limit=20)
            found = [c for c in placed if c.date_created is None or c.date_created >= since]
        async with self.ctx.sessionmaker() as session, session.begin():
            row = await session.get(BatchRow, row_id, with_for_update=True)
            if row is None or row.state != RowState.DIALING:
                return
            call = (
                await session.get(Call, row.call_id, with_for_update=True) if row.call_id else None
            )
            # A status callback for this claim may already have stored its Call SID on the
            # call: that SID is the call Twilio placed for this row. Any other call Twilio
            # lists is this row's unless another call row holds it.
            adopt_sid = call.call_sid if call is not None else None
            if adopt_sid is None and found:
                others = select(Call.call_sid).where(Call.call_sid.in_([c.sid for c in found]))
                if call is not None:
                    others = others.where(Call.id != call.id)
                known = set((await session.scalars(others)).all())
                adopt = next((c for c in sorted(found, key=_created) if c.sid not in known), None)
                adopt_sid = adopt.sid if adopt is not None else None
            if adopt_sid is not None:
                log.info("batch row %s: Twilio had placed %s; adopted", row_id, adopt_sid)
                await self._adopt(session, row, call, adopt_sid)
                return
            if not may_requeue:
                row.error = reason  # still `dialing`: a later slice decides
                return
            if row.attempts >= self.max_attempts:
                row.state, row.error = RowState.FAILED, f"Twilio could not be reached: {reason}"
                row.outcome = CallStatus.FAILED
                if call is not None and call.status not in FINAL:
                    call.status, call.ended_at, call.ended_reason = (
                        CallStatus.FAILED,
                        utcnow(),
                        "twilio-error",
                    )
                    call.error_message = reason
                return
            # Not placed: dial again after a backoff (the same call row is reused).
            row.state, row.error = RowState.QUEUED, reason
            row.next_attempt_at = utcnow() + timedelta(seconds=min(300, 5 * 2**row.attempts))

    async def _adopt(
        self, session: AsyncSession, row: BatchRow, call: Call | None, sid: str
    ) -> None:
        """Row `row` was dialed as Twilio's call `sid`: record it as its call's SID."""
        row.state, row.call_sid, row.error, row.next_attempt_at = RowState.DIALED, sid, None, None
        if call is None:
            return
        if call.call_sid is None:
            call.call_sid = sid
        await _decide_if_ended(session, call)
        agent = await session.get(Agent, call.agent_id) if call.agent_id else None
        await schedule_check(
            session,
            call,
            max_seconds=agent.max_call_duration_seconds if agent else MAX_CALL_SECONDS,
        )


async def _decide_if_ended(session: AsyncSession, call: Call) -> None:
    """A call that ended before its claim was settled (its status callbacks came first) gets
    its outcome decided now: the decision waits for the row to be `dialed`."""
    if call.status in FINAL:
        await enqueue_many(session, [outcome_job(call.id, call.project_id, call.status)])


_LAST = datetime.max.replace(tzinfo=UTC)


def _created(facts: Any) -> datetime:
    return facts.date_created or _LAST
