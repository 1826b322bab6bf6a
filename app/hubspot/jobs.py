"""The HubSpot sync job: every finished call of a connected project lands in its HubSpot.

Queued in the transaction that makes the call final: after the post-call analysis for a call
with a conversation (its summary goes into HubSpot), at the final status for one without
(no-answer, busy, ...); and again when the recording arrives after a sync has read the call
(Twilio's usual order), which then updates the engagement. Two syncs of one call never both
create: while one may still be creating the engagement, another waits for its id. HubSpot's
answers decide what happens next: 429 waits
Retry-After, 5xx and timeouts retry with the worker's backoff, 401 marks the connection broken
and stops every sync of the project until it connects again.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import utcnow
from app.hubspot import service
from app.hubspot.service import ConnectionStatus
from app.hubspot.sync import CallFacts, sync_call
from app.integrations.hubspot import client as hs
from app.jobs.queue import enqueue
from app.jobs.worker import PermanentFailure, RetryLater
from app.models import Call, HubSpotConnection, Job

log = logging.getLogger("talkstack.hubspot")

SYNC_JOB = "hubspot.sync_call"
MAX_ATTEMPTS = 8


def _creating_window(ctx: AppContext) -> timedelta:
    """How long one sync may take to create a call's engagement: its HubSpot requests (find or
    create the contact, then log the call), each within the timeout, and room to store the id."""
    return timedelta(seconds=4 * ctx.settings.hubspot_timeout_seconds + 10)


async def call_finished(session: AsyncSession, call: Call) -> None:
    """Queue the call's HubSpot sync in the caller's transaction, if the project is connected."""
    connected = await session.scalar(
        select(HubSpotConnection.id).where(
            HubSpotConnection.project_id == call.project_id,
            HubSpotConnection.status == ConnectionStatus.CONNECTED,
        )
    )
    if connected is None:
        return
    await enqueue(
        session,
        kind=SYNC_JOB,
        payload={"call_id": str(call.id)},
        project_id=call.project_id,
        max_attempts=MAX_ATTEMPTS,
    )


async def run_sync_job(ctx: AppContext, job: Job) -> None:
    """Log one call in the project's HubSpot (or update what an earlier sync logged)."""
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session, session.begin():
        # Locked: a recording callback decides by `hubspot_read_at` whether to sync again.
        call = await session.get(Call, call_id, with_for_update=True)
        connection = await service.get_connection(session, call.project_id) if call else None
        if call is None or connection is None or connection.status != ConnectionStatus.CONNECTED:
            return  # gone, disconnected, or broken: nothing to do until it connects again
        token = service.decrypt_token(ctx, connection)
        if token is None:
            service.mark_broken(connection, service.UNREADABLE_MESSAGE)
            return
        now = utcnow()
        creating_until = (
            call.hubspot_read_at + _creating_window(ctx) if call.hubspot_read_at else now
        )
        if call.hubspot_call_id is None and creating_until > now:
            # Another sync of this call (on another worker) may be creating its engagement:
            # wait for its id, then update, rather than log the call twice.
            raise RetryLater(
                (creating_until - now).total_seconds() + 1.0,
                "another sync of this call is logging it in HubSpot",
            )
        call.hubspot_read_at = now
        facts = CallFacts.of(call)
        used = connection.encrypted_token
    try:
        await sync_call(ctx, service.client_for(ctx, token), facts)
    except hs.HubSpotUnauthorized as exc:
        await _record(ctx, facts, used, exc.message, broken=True)
        raise PermanentFailure(exc.message) from exc
    except (hs.HubSpotRateLimited, hs.HubSpotUnavailable) as exc:
        last = job.attempts >= job.max_attempts
        note = f"gave up after {job.attempts} attempts" if last else "will retry"
        await _record(ctx, facts, used, f"{exc.message} ({note})")
        raise RetryLater(exc.retry_after, exc.message) from exc
    except hs.HubSpotError as exc:
        await _record(ctx, facts, used, exc.message)
        raise PermanentFailure(exc.message) from exc
    await _record(ctx, facts, used, None)


async def _record(
    ctx: AppContext, facts: CallFacts, used: str, error: str | None, *, broken: bool = False
) -> None:
    """The outcome, on the connection whose token was used (not on one made since)."""
    async with ctx.sessionmaker() as session, session.begin():
        if error is not None:
            # Nothing is being created any more: the next sync need not wait for this one.
            await session.execute(
                update(Call)
                .where(Call.id == facts.id, Call.hubspot_call_id.is_(None))
                .values(hubspot_read_at=None)
            )
        connection = await service.get_connection(session, facts.project_id, lock=True)
        if connection is None or connection.encrypted_token != used:
            return
        if broken:
            service.mark_broken(connection, error or service.REVOKED_MESSAGE, facts.call_sid)
            log.warning("HubSpot of project %s is broken: %s", facts.project_id, error)
        else:
            result = service.SyncResult.ERROR if error else service.SyncResult.SUCCESS
            service.record_result(connection, result, error, facts.call_sid)


async def analysis_gave_up(ctx: AppContext, call_id: uuid.UUID) -> None:
    """The post-call analysis failed for good: the call is synced without its summary."""
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id)
        if call is not None:
            await call_finished(session, call)
