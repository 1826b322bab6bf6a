"""Applying Twilio's status, recording and answering-machine callbacks to a call."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.call import status as states
from app.call.events import call_changed
from app.db import utcnow
from app.jobs.queue import enqueue
from app.models import Call

log = logging.getLogger("talkstack.call.callbacks")

PRICE_JOB = "call.price"


def _when(params: Mapping[str, str]) -> datetime:
    try:
        return parsedate_to_datetime(params["Timestamp"])
    except (KeyError, TypeError, ValueError):
        return utcnow()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


async def apply_status(session: AsyncSession, call: Call, params: Mapping[str, str]) -> bool:
    """Apply one status callback; return whether the call's status changed."""
    sequence = _int(params.get("SequenceNumber"))
    if sequence is not None:
        if sequence <= call.last_sequence:
            log.info("call %s: late or repeated callback #%s ignored", call.call_sid, sequence)
            return False
        call.last_sequence = sequence
    new = params.get("CallStatus", "")
    if not states.advances(call.status, new):
        return False
    when = _when(params)
    call.status = states.final_status(new, call.answered_by, call.ended_reason)
    if new == "in-progress":
        call.answered_at = when
    if new in states.FINAL:
        call.ended_at = when
        call.seconds = _int(params.get("CallDuration")) or 0
        call.ended_reason = call.ended_reason or new
        if new == "completed":
            # Twilio prices a call after it ends, sometimes minutes later: ask for it then.
            await enqueue(
                session,
                kind=PRICE_JOB,
                payload={"call_id": str(call.id)},
                project_id=call.project_id,
                max_attempts=8,
            )
    await call_changed(session, call)
    return True


async def apply_amd(session: AsyncSession, call: Call, params: Mapping[str, str]) -> bool:
    answered_by = params.get("AnsweredBy") or None
    if answered_by is None:
        return False
    call.answered_by = answered_by
    refined = states.final_status(call.status, answered_by)
    if refined != call.status:
        call.status = refined
        await call_changed(session, call)
        return True
    return False


def apply_recording(call: Call, params: Mapping[str, str]) -> None:
    if params.get("RecordingStatus", "completed") != "completed":
        return
    url = params.get("RecordingUrl")
    if not url:
        return
    # Twilio sends the recording's URL without an extension; .mp3 is what people can play.
    if not url.rsplit("/", 1)[-1].count("."):
        url += ".mp3"
    if url not in call.recording_urls:
        call.recording_urls = [*call.recording_urls, url]
