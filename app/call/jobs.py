"""Background work about calls."""

from __future__ import annotations

import uuid

from app.context import AppContext
from app.jobs.worker import RetryLater
from app.models import Call, Job


async def fetch_price(ctx: AppContext, job: Job) -> None:
    """Store Twilio's price of a finished call (positive); Twilio may take minutes to set it."""
    if ctx.telephony is None:
        return
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
        sid = call.call_sid if call is not None else None
    if sid is None:
        return
    facts = await ctx.telephony.fetch_call(sid)
    if facts.price is None:
        raise RetryLater(delay=60.0 * job.attempts, reason="Twilio has not priced the call yet")
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
        if call is None:
            return
        call.cost = facts.price
        call.cost_unit = facts.price_unit
        if facts.duration_seconds is not None and not call.seconds:
            call.seconds = facts.duration_seconds
        await session.commit()
