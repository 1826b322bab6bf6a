"""Handing a call to the agent's human colleague (its `transferNumber`).

The agent's `transfer_call` tool ends the relay session with a transfer handoff; Twilio then asks
the session's Connect action (app/web/twilio.py), whose answer is decided here
(`session_ended`):

- cold: `<Dial>` the number, with our number on the call as caller id; the two people talk,
  the agent is gone. When the dialed call ends, Twilio asks the Dial's action what next
  (`human_dialed`): the human's call is recorded (`transfer_*`, priced like a warm one); one
  nobody answered takes the callee back to the agent, in that same answer.
- warm: the callee waits in a conference (hold music) while the server calls the human, whose
  leg first hears a briefing (the summary the agent gave with the tool call), then joins and
  starts the conference. If Twilio refuses to call the human, the transfer falls back to cold.

The call records the target (`transferredTo`) and ends `transferred`; the project's webhook
gets a `call.transferred` event. A call is transferred at most once: the tool is not offered
again, and a second handoff is refused.

The human's leg of a warm transfer is a Twilio call of its own, billed on its own: its Call SID,
status, duration and price are kept on the call (`transfer_*`), from its status callbacks and
the price job.

The human's leg hears the briefing, then Twilio asks this server what comes next (a signed
redirect, `human_briefed`): the answer puts them in the conference and, in the same
transaction, keeps that they were put through (`transfer_joined_at`), so the record never
depends on a callback that may be lost. If that leg ends unanswered (busy, no answer, failed,
canceled), or answered but hung up during the briefing (it ends `completed` without
`transfer_joined_at`), the callee goes back to the agent: a `transfer_call` turn
saying why is added to the transcript, the project's webhook gets `call.transfer_failed`,
and the callee's call is redirected to a new relay session of the same
call, which continues the transcript; the agent, told why, speaks first. `transferredTo` stays
(a transfer was tried) and `endedReason` is whatever ends the conversation. If the callee has
hung up, or Twilio cannot redirect the call, the callee is told nobody could take the call and
it ends `transfer-failed`: never a caller on hold forever. Twilio is asked outside any
transaction.

The other way round, a callee who hangs up while the human's phone rings (or during the
briefing) ends the human's call too (the `call.end_transfer_leg` job, queued with the callee's
final status; app/call/jobs.py): nobody answers into an empty conference.

Every one of those steps hangs on the human leg's status callbacks, and Twilio's callbacks can
be lost (or sent while this server was down). The hand-over therefore queues, in its
transaction, a look at Twilio's record of the human's call once it must have been answered or
given up (`check_leg`, the `call.check_transfer_leg` job): a leg Twilio has ended is applied as
its callback would have been, so a callee is never left on hold because one request went
missing, and the leg's status, duration and price are kept all the same. The look is repeated
while the leg lives: often while the callee waits, rarely once the two talk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.call import status as states
from app.call.callbacks import same_call
from app.call.events import call_changed
from app.call.jobs import TRANSFER_LEG, as_status_callback, fetch_known_call
from app.call.lifecycle import CHECK_GRACE, PRICE_ATTEMPTS, PRICE_JOB
from app.call.status import CallStatus
from app.context import AppContext
from app.conversation.documents import relay_twiml
from app.db import utcnow
from app.errors import AppError
from app.integrations.twilio import twiml
from app.integrations.webhooks.sender import CallEvent
from app.jobs.queue import enqueue
from app.jobs.worker import RetryLater
from app.models import Agent, Call, Job
from app.timefmt import iso_ms

log = logging.getLogger("talkstack.conversation.transfer")

TRANSFERRED = "transferred"
FAILED = "transfer-failed"
FAILED_EVENT: CallEvent = "call.transfer_failed"
# How long the human's phone rings before Twilio gives up (calls.create's Timeout).
RING_SECONDS = 30
# A look at Twilio's record of the human's call, in case its status callback is lost: first
# once it must have been answered or given up, then every LEG_CHECK_EVERY while the callee
# waits, every CHECK_GRACE once the two talk (the call's own time limit bounds that: 60 tries
# last about five hours, past the longest call, four).
LEG_CHECK_JOB = "call.check_transfer_leg"
LEG_CHECK_FIRST = timedelta(seconds=RING_SECONDS + 30)
LEG_CHECK_EVERY = timedelta(seconds=20)
LEG_CHECK_ATTEMPTS = 60
# A <Dial>'s DialCallStatus as the human's call status (`answered`: connected, said of
# conferences); anything else Twilio might say counts as failed.
DIAL_STATUSES = {
    "completed": CallStatus.COMPLETED,
    "answered": CallStatus.COMPLETED,
    "busy": CallStatus.BUSY,
    "no-answer": CallStatus.NO_ANSWER,
    "failed": CallStatus.FAILED,
    "canceled": CallStatus.CANCELED,
}
# The human's leg ended without answering.
UNANSWERED = frozenset(
    {CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED, CallStatus.CANCELED}
)
# What a transfer turn says of a human who answered but hung up before joining.
HUNG_UP = "hung-up"
NOBODY = "I'm sorry, nobody could take your call right now. We will get back to you. Goodbye."
# What the human hears after the briefing when the callee has hung up meanwhile.
GONE = "The caller has already hung up. Goodbye."
# Why the transfer failed, as the transcript says it and the agent is told.
_WHY = {
    CallStatus.BUSY: "the line was busy",
    CallStatus.NO_ANSWER: "nobody answered",
    CallStatus.FAILED: "the call could not be connected",
    CallStatus.CANCELED: "the call was canceled",
    HUNG_UP: "they hung up before being connected",
}


def our_number(call: Call) -> str:
    """The Twilio number of ours on the call: the caller id of the human's leg."""
    return call.from_number if call.direction == "outbound" else call.to_number


def briefing(call: Call, handoff: Mapping[str, Any]) -> str:
    other = call.to_number if call.direction == "outbound" else call.from_number
    summary = str(handoff.get("summary") or handoff.get("reason") or "").strip()
    return f"Transferred call with {' '.join(other)}. {summary}".strip()


def may_transfer(call: Call) -> bool:
    """Whether the call may still be handed over: once per call."""
    return call.transferred_to is None


async def hand_over(
    ctx: AppContext, session: AsyncSession, call: Call, agent: Agent, handoff: Mapping[str, Any]
) -> str:
    """Record the transfer and answer the TwiML that carries it out (`call` is locked)."""
    number = agent.transfer_number
    assert number is not None
    call.transferred_to = number
    call.ended_reason = TRANSFERRED
    await call_changed(session, call, "call.transferred")
    if agent.transfer_mode == "warm":
        base = ctx.settings.public_base_url
        try:
            leg = await ctx.telephony.call_with_twiml(
                to=number,
                from_=our_number(call),
                twiml=twiml.say_then(
                    briefing(call, handoff),
                    f"{base}/twilio/calls/{call.id}/transfer-briefed",
                    agent.language,
                ),
                status_callback=f"{base}/twilio/calls/{call.id}/transfer-status",
                ring_seconds=RING_SECONDS,
            )
        except AppError as exc:
            log.warning("call %s: the warm transfer's call failed (%s); cold", call.id, exc.message)
        else:
            call.transfer_call_sid = leg.sid
            call.transfer_status = leg.status
            await enqueue(
                session,
                kind=LEG_CHECK_JOB,
                payload={"call_id": str(call.id)},
                project_id=call.project_id,
                run_at=utcnow() + LEG_CHECK_FIRST,
                max_attempts=LEG_CHECK_ATTEMPTS,
            )
            log.info("call %s: warm transfer, the callee waits for the human", call.id)
            return twiml.conference(room(call), starts_it=False)
    log.info("call %s: transferred", call.id)
    return twiml.dial(
        number,
        caller_id=our_number(call),
        action=f"{ctx.settings.public_base_url}/twilio/calls/{call.id}/transfer-dialed",
        timeout_seconds=RING_SECONDS,
    )


async def human_dialed(
    ctx: AppContext, session: AsyncSession, call_id: uuid.UUID, params: Mapping[str, str]
) -> str:
    """The `<Dial>` of a cold transfer is over (its action): record the human's call; if it
    was never answered and the callee is still on the line, the callee goes back to the agent
    (the answer is the new relay session), else the call ends."""
    call = await session.get(Call, call_id, with_for_update=True)
    if call is None or call.transferred_to is None or params.get("CallSid") != call.call_sid:
        log.warning("call %s: a dial's end of another call ignored", call_id)
        return twiml.hang_up()
    agent = await session.get(Agent, call.agent_id) if call.agent_id else None
    if call.transfer_status in states.FINAL:
        # Twilio asked again (our first answer was lost): the same answer.
        if call.ended_reason is None and agent is not None:
            return relay_twiml(ctx, call, agent, resumed=True)
        return twiml.hang_up()
    status = DIAL_STATUSES.get(params.get("DialCallStatus", ""), CallStatus.FAILED)
    call.transfer_call_sid = params.get("DialCallSid") or None
    call.transfer_status = status
    call.transfer_seconds = _seconds(params.get("DialCallDuration"))
    if status == CallStatus.COMPLETED:
        call.transfer_joined_at = utcnow() - timedelta(seconds=call.transfer_seconds)
        if call.transfer_call_sid is not None:
            await _price_leg(session, call)
        log.info("call %s: the human took the call", call_id)
        return twiml.hang_up()
    log.info("call %s: the human did not take the call (%s)", call_id, status)
    _transfer_failed_turn(call, status)
    if params.get("CallStatus") in states.FINAL or agent is None:
        await _fail(session, call)  # the callee hung up while it rang
        return twiml.hang_up()
    call.ended_reason = None
    await call_changed(session, call, FAILED_EVENT)
    return relay_twiml(ctx, call, agent, resumed=True)


async def session_ended(
    ctx: AppContext, session: AsyncSession, call_id: uuid.UUID, params: Mapping[str, str]
) -> str:
    """ConversationRelay's session is over (its Connect action): the TwiML that hangs up, or
    that hands the callee to the agent's human colleague when the agent transferred the call."""
    handoff = _handoff(params.get("HandoffData", ""))
    log.info(
        "relay for call %s ended: %s (%s)",
        call_id,
        params.get("SessionStatus", ""),
        handoff.get("reason", "no reason given"),
    )
    target = handoff.get("transfer")
    if handoff.get("reason") == TRANSFERRED and isinstance(target, dict):
        call = await session.get(Call, call_id, with_for_update=True)
        agent = await session.get(Agent, call.agent_id) if call and call.agent_id else None
        # The number comes back from Twilio as we sent it; it is still checked against the
        # agent's, so the only number ever dialed is one the agent's owner set. Once per call.
        if (
            call is not None
            and agent is not None
            and agent.transfer_number
            and target.get("to") == agent.transfer_number
            and call.call_sid == params.get("CallSid")
            and call.status not in states.FINAL  # the callee hung up meanwhile
            and may_transfer(call)
        ):
            return await hand_over(ctx, session, call, agent, target)
        log.warning("call %s: a transfer that does not match its agent was refused", call_id)
    return twiml.hang_up()


def _handoff(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def human_leg_status(ctx: AppContext, call_id: uuid.UUID, params: Mapping[str, str]) -> None:
    """The human's leg of a warm transfer moved on: recorded; when it ended unanswered, the
    waiting callee goes back to the agent (or, if that cannot be, is told and the call ends)."""
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        if call is None or not await _leg_moved(session, call, params):
            return
        why = _why_not_joined(call)
        if why is None or call.ended_reason != TRANSFERRED:
            return
        log.info("call %s: the human did not take the call (%s)", call.id, why)
        _transfer_failed_turn(call, why)
        agent = await session.get(Agent, call.agent_id) if call.agent_id else None
        language = agent.language if agent is not None else "en-US"
        sid = call.call_sid
        if call.status in states.FINAL or sid is None or agent is None:
            # The callee hung up while on hold: nobody to take back.
            await _fail(session, call)
            return
        # Back with the agent: its new session (or Twilio's final status) decides the end.
        call.ended_reason = None
        await call_changed(session, call, FAILED_EVENT)
        resume = relay_twiml(ctx, call, agent, resumed=True)
    try:
        await ctx.telephony.redirect_call(sid, resume)
    except AppError as exc:
        log.warning("call %s: the callee could not go back to the agent (%s)", call_id, exc.message)
        # As a last resort, say sorry; a callee who has hung up hears nothing, which is fine.
        with contextlib.suppress(AppError):
            await ctx.telephony.redirect_call(sid, twiml.say_and_hang_up(NOBODY, language))
        async with ctx.sessionmaker() as session, session.begin():
            call = await session.get(Call, call_id, with_for_update=True)
            if call is not None:
                await _fail(session, call, event=None)
        return
    log.info("call %s: the callee is back with the agent", call_id)


async def check_leg(ctx: AppContext, job: Job) -> None:
    """The `call.check_transfer_leg` job: when Twilio has ended the human's call but its final
    status callback has not come, apply it from Twilio's record, as the callback would have
    been (`human_leg_status`: a callee left waiting goes back to the agent). A callback that
    comes after all changes nothing: a status is applied once."""
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session:  # Twilio is asked outside any transaction
        call = await session.get(Call, call_id)
    if call is None or call.transfer_call_sid is None or call.transfer_status in states.FINAL:
        return  # gone, or the callback came: nothing to ask Twilio
    sid = call.transfer_call_sid
    facts = await fetch_known_call(ctx, sid)
    if facts.status not in states.FINAL:
        every = LEG_CHECK_EVERY if call.transfer_joined_at is None else CHECK_GRACE
        raise RetryLater(
            delay=every.total_seconds(), reason=f"Twilio says the human's call is {facts.status}"
        )
    log.warning(
        "call %s: the human's call %s ended %s; its status callback never came",
        call_id,
        sid,
        facts.status,
    )
    await human_leg_status(ctx, call_id, as_status_callback(sid, facts))


def _transfer_failed_turn(call: Call, why: str) -> None:
    """Add the transcript's turn that says why the transfer failed (the model reads it)."""
    now = iso_ms(utcnow())
    call.transcript = [
        *call.transcript,
        {
            "role": "tool",
            "name": "transfer_call",
            "arguments": {},
            "result": f"The transfer failed: {_WHY[why]}.",
            "transferFailed": why,
            "startedAt": now,
            "endedAt": now,
        },
    ]


async def _price_leg(session: AsyncSession, call: Call) -> None:
    """Twilio prices a call after it ends: the human's, with the same job as the call's own."""
    await enqueue(
        session,
        kind=PRICE_JOB,
        payload={"call_id": str(call.id), "leg": TRANSFER_LEG},
        project_id=call.project_id,
        max_attempts=PRICE_ATTEMPTS,
    )


def room(call: Call) -> str:
    """The name of the call's warm-transfer conference."""
    return f"talkstack-{call.id}"


async def human_briefed(
    ctx: AppContext, session: AsyncSession, call_id: uuid.UUID, params: Mapping[str, str]
) -> str:
    """The human heard the briefing through: put them through to the waiting callee, and keep
    that they were (`transfer_joined_at`), in the answer's own transaction. Were this lost,
    Twilio would get no conference to join: the record and what the human hears agree, with no
    callback to wait for. A callee who has hung up meanwhile is said so."""
    call = await session.get(Call, call_id, with_for_update=True)
    if (
        call is None
        or call.transfer_call_sid is None
        or params.get("CallSid") != call.transfer_call_sid
    ):
        log.warning("call %s: a briefing's end of another call ignored", call_id)
        return twiml.hang_up()
    if call.status in states.FINAL:
        agent = await session.get(Agent, call.agent_id) if call.agent_id else None
        return twiml.say_and_hang_up(GONE, agent.language if agent is not None else "en-US")
    if call.transfer_joined_at is None:
        call.transfer_joined_at = utcnow()
        log.info("call %s: the human, briefed, is put through to the callee", call_id)
    base = ctx.settings.public_base_url
    return twiml.conference(
        room(call),
        starts_it=True,
        joined_callback=f"{base}/twilio/calls/{call.id}/transfer-joined",
    )


async def human_joined(ctx: AppContext, call_id: uuid.UUID, params: Mapping[str, str]) -> None:
    """Twilio's conference event for the human's leg: `participant-join` confirms the human is
    with the callee. The briefing's end (`human_briefed`) records it first; this event is a
    second witness, and the only one for a transfer begun before the briefing's redirect."""
    if params.get("StatusCallbackEvent") != "participant-join":
        return
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        if call is None:
            return
        if call.transfer_call_sid is None or params.get("CallSid") != call.transfer_call_sid:
            log.warning("call %s: a conference event of another call ignored", call_id)
            return
        if call.transfer_joined_at is None:
            call.transfer_joined_at = utcnow()
            log.info("call %s: the human joined the callee", call_id)


def _why_not_joined(call: Call) -> str | None:
    """Why the human's leg, now over, never joined the callee; None while it may yet, or
    when it did."""
    status = call.transfer_status or ""
    if status in UNANSWERED:
        return status
    if status == CallStatus.COMPLETED and call.transfer_joined_at is None:
        return HUNG_UP
    return None


async def _leg_moved(session: AsyncSession, call: Call, params: Mapping[str, str]) -> bool:
    """Apply a status callback of the human's leg (forward only); whether the leg moved on."""
    sid = params.get("CallSid") or None
    if not same_call(call.transfer_call_sid, sid):
        log.warning("call %s: a transfer callback for another call (%s) ignored", call.id, sid)
        return False
    new = params.get("CallStatus", "")
    if not states.advances(call.transfer_status or CallStatus.QUEUED, new):
        return False
    # The callback can beat the hand-over's transaction to storing the leg's SID.
    call.transfer_call_sid = call.transfer_call_sid or sid
    call.transfer_status = new
    if new in states.FINAL:
        call.transfer_seconds = _seconds(params.get("CallDuration"))
    if new == CallStatus.COMPLETED:
        await _price_leg(session, call)
    return True


async def _fail(
    session: AsyncSession, call: Call, *, event: CallEvent | None = FAILED_EVENT
) -> None:
    """The transfer failed and the call is over (or about to be): it ends `transfer-failed`."""
    call.ended_reason = FAILED
    if event is not None:
        await call_changed(session, call, event)
    await call_changed(session, call)


def _seconds(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
