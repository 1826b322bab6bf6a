"""Leaving the agent's voicemail message on an answering machine.

A call whose agent has a `voicemailMessage` is placed with answering-machine detection that
waits for the end of the greeting (DetectMessageEnd). When Twilio's verdict says a machine
greeting is over (the beep, or silence), a `call.voicemail` job replaces what the call is doing
(the relay conversation) with TwiML that says the message, rendered with the call's variables,
and hangs up. The call ends `voicemail` (its status, from the machine verdict) with endedReason
`voicemail`, and the message is in its transcript. Twilio is asked outside any transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from app.call import status as states
from app.call.render import render_lenient
from app.context import AppContext
from app.db import utcnow
from app.integrations.twilio import twiml
from app.integrations.twilio.errors import TwilioRejected, TwilioUnavailable
from app.jobs.queue import enqueue
from app.jobs.worker import RetryLater
from app.models import Agent, Call, Job
from app.timefmt import iso_ms

log = logging.getLogger("talkstack.conversation.voicemail")

VOICEMAIL_JOB = "call.voicemail"
# Twilio's verdicts once a machine's greeting is over (with DetectMessageEnd).
GREETING_OVER = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
ENDED_REASON = "voicemail"


async def after_amd(session: AsyncSession, call: Call, params: Mapping[str, str]) -> None:
    """In the AMD callback's transaction: queue the message when it is time to leave it."""
    if params.get("AnsweredBy") not in GREETING_OVER or call.agent_id is None:
        return
    if call.status in states.FINAL or call.ended_reason == ENDED_REASON:
        return
    agent = await session.get(Agent, call.agent_id)
    if agent is None or not agent.voicemail_message:
        return
    await enqueue(
        session,
        kind=VOICEMAIL_JOB,
        payload={"call_id": str(call.id)},
        project_id=call.project_id,
        max_attempts=3,
    )


def message_for(agent: Agent, call: Call) -> str:
    """The agent's message with the call's variables (checked when the call was placed)."""
    return render_lenient(agent.voicemail_message, call.dynamic_variables) or ""


async def leave_message(ctx: AppContext, job: Job) -> None:
    """The `call.voicemail` job: say the message on the live call, then hang up. At most once:
    the call is marked before Twilio is asked (a repeated verdict or job finds it marked), and
    unmarked again if Twilio could not be asked."""
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        agent = await session.get(Agent, call.agent_id) if call and call.agent_id else None
        if call is None or agent is None or not agent.voicemail_message or not call.call_sid:
            return
        if call.status in states.FINAL or call.ended_reason == ENDED_REASON:
            return  # over already (hung up during the greeting), or the message is left
        ctx.telephony.ensure_configured()  # before the mark: nothing changes if not
        call.ended_reason = ENDED_REASON
        message = message_for(agent, call)
        document = twiml.say_and_hang_up(message, language=agent.language)
        sid = call.call_sid
    try:
        await ctx.telephony.redirect_call(sid, document)
    except TwilioRejected as exc:
        # Twilio will not change a call that is over: nobody is left to hear the message.
        log.info("call %s: voicemail not left: %s", call_id, exc.message)
        await _unmark(ctx, call_id)
        return
    except TwilioUnavailable as exc:
        await _unmark(ctx, call_id)
        raise RetryLater(2.0, f"Twilio could not be asked to leave the message: {exc}") from exc
    now = iso_ms(utcnow())
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        if call is None:
            return
        turn = {
            "role": "agent",
            "text": message,
            "interrupted": False,
            "voicemail": True,
            "startedAt": now,
            "endedAt": now,
        }
        call.transcript = [*call.transcript, turn]
    log.info("call %s: voicemail message left", call_id)


async def _unmark(ctx: AppContext, call_id: uuid.UUID) -> None:
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        if call is not None and call.ended_reason == ENDED_REASON:
            call.ended_reason = None
