"""The HubSpot sync job: every finished call of a connected project lands in its HubSpot.

Queued once per call, in the transaction that makes the call final: after the post-call
analysis for a call with a conversation (its summary goes into HubSpot), at the final status
for one without (no-answer, busy, ...). HubSpot's answers decide what happens next: 429 waits
Retry-After, 5xx and timeouts retry with the worker's backoff, 401 marks the connection broken
and stops every sync of the project until it connects again.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.hubspot import client as hs
from app.hubspot import service
from app.hubspot.sync import CallFacts, sync_call
from app.jobs.queue import enqueue
from app.jobs.worker import PermanentFailure, RetryLater
from app.models import Call, HubSpotConnection, Job

log = logging.getLogger("talkstack.hubspot")

SYNC_JOB = "hubspot.sync_call"
MAX_ATTEMPTS = 8


async def call_finished(session: AsyncSession, call: Call) -> None:
    """Queue the call's HubSpot sync in the caller's transaction, if the project is connected."""
    connected = await session.scalar(
        select(HubSpotConnection.id).where(
            HubSpotConnection.project_id == call.project_id,
            HubSpotConnection.status == service.CONNECTED,
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
    """Log one call in the project's HubSpot (or update what an earlier attempt logged)."""
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id)
        connection = await service.get_connection(session, call.project_id) if call else None
        if call is None or connection is None or connection.status != service.CONNECTED:
            return  # gone, disconnected, or broken: nothing to do until it connects again
        token = service.decrypt_token(ctx, connection)
        if token is None:
            service.mark_broken(connection, service.UNREADABLE_MESSAGE)
            return
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
        connection = await service.get_connection(session, facts.project_id, lock=True)
        if connection is None or connection.encrypted_token != used:
            return
        if broken:
            service.mark_broken(connection, error or service.REVOKED_MESSAGE, facts.call_sid)
            log.warning("HubSpot of project %s is broken: %s", facts.project_id, error)
        else:
            result = service.ERROR if error else service.SUCCESS
            service.record_result(connection, result, error, facts.call_sid)


async def analysis_gave_up(ctx: AppContext, call_id: uuid.UUID) -> None:
    """The post-call analysis failed for good: the call is synced without its summary."""
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id)
        if call is not None:
            await call_finished(session, call)
