"""Background work about calls."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC
from email.utils import format_datetime

from app.call import callbacks, lifecycle
from app.call import status as states
from app.call.lifecycle import CHECK_GRACE
from app.context import AppContext
from app.errors import AppError
from app.integrations.twilio.types import CallFacts
from app.jobs.worker import PermanentFailure, RetryLater
from app.models import Call, Job

log = logging.getLogger("talkstack.call.jobs")

# Twilio's "The requested resource ... was not found".
TWILIO_NOT_FOUND = 20404


# A price job's `leg`: the warm transfer's call to the human, priced into `transfer_cost`.
TRANSFER_LEG = "transfer"


async def _twilio_sid(
    ctx: AppContext, call_id: uuid.UUID, *, unless_final: bool = False, leg: str | None = None
) -> str | None:
    """The call's Call SID (or its transfer leg's), read in a short session of its own (Twilio
    is asked outside any transaction); None when the call is gone, was never placed, or
    (`unless_final`) is final."""
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
    if call is None or (unless_final and call.status in states.FINAL):
        return None
    return call.transfer_call_sid if leg == TRANSFER_LEG else call.call_sid


async def fetch_price(ctx: AppContext, job: Job) -> None:
    """Store Twilio's price of a finished call (positive), or of its warm transfer's call to
    the human (`leg`); Twilio may take minutes to set it."""
    call_id = uuid.UUID(job.payload["call_id"])
    leg = job.payload.get("leg")
    sid = await _twilio_sid(ctx, call_id, leg=leg)
    if sid is None:
        return
    facts = await ctx.telephony.fetch_call(sid)
    if facts.price is None:
        raise RetryLater(delay=60.0 * job.attempts, reason="Twilio has not priced the call yet")
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
        if call is None:
            return
        if leg == TRANSFER_LEG:
            call.transfer_cost = facts.price
            if facts.duration_seconds is not None and not call.transfer_seconds:
                call.transfer_seconds = facts.duration_seconds
        else:
            call.cost = facts.price
            call.cost_unit = facts.price_unit
            if facts.duration_seconds is not None and not call.seconds:
                call.seconds = facts.duration_seconds
        await session.commit()


async def end_transfer_leg(ctx: AppContext, job: Job) -> None:
    """Hang up the human's leg of a warm transfer whose callee is gone (a ringing call is
    canceled, an answered one completed). Its own final status then ends the transfer
    (app/conversation/transfer.py): the call ends `transfer-failed` unless the two talked."""
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
    if call is None or not lifecycle.leaves_human_waiting(
        call.status, call.transfer_call_sid, call.transfer_status
    ):
        return
    assert call.transfer_call_sid is not None
    log.info("call %s: the callee is gone; the human's call is ended", call_id)
    await ctx.telephony.end_call(call.transfer_call_sid)


# -- the final status, when Twilio's callback never came ------------------------------------------


async def fetch_known_call(ctx: AppContext, sid: str) -> CallFacts:
    """Twilio's record of call `sid`, for a job: a SID Twilio does not know will never be
    known, and the job is given up at once (PermanentFailure)."""
    try:
        return await ctx.telephony.fetch_call(sid)
    except AppError as exc:
        if exc.extra.get("twilioCode") == TWILIO_NOT_FOUND:
            raise PermanentFailure(f"Twilio has no call {sid}") from exc
        raise


def as_status_callback(sid: str, facts: CallFacts) -> dict[str, str]:
    """Twilio's record of a finished call as the parameters of the status callback that
    would have brought it (applied when that callback never came)."""
    params = {
        "CallSid": sid,
        "CallStatus": facts.status,
        "CallDuration": str(facts.duration_seconds or 0),
    }
    if facts.end_time is not None:
        params["Timestamp"] = format_datetime(facts.end_time.astimezone(UTC), usegmt=True)
    return params


async def check_call(ctx: AppContext, job: Job) -> None:
    call_id = uuid.UUID(job.payload["call_id"])
    sid = await _twilio_sid(ctx, call_id, unless_final=True)
    if sid is None:
        return  # gone, or the callback came: nothing to ask Twilio
    facts = await fetch_known_call(ctx, sid)
    if facts.status not in states.FINAL:
        raise RetryLater(
            delay=CHECK_GRACE.total_seconds(), reason=f"Twilio says the call is {facts.status}"
        )
    params = as_status_callback(sid, facts)
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        if call is not None and await callbacks.apply_status(session, call, params):
            log.warning(
                "call %s: Twilio's final status callback never came; %s from its record",
                sid,
                facts.status,
            )
