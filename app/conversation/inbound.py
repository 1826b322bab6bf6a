"""A call to one of our numbers: the agent assigned to the number answers it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.call import callbacks, lifecycle
from app.call.render import render_lenient
from app.call.status import CallStatus
from app.context import AppContext
from app.conversation.documents import relay_twiml
from app.errors import AppError
from app.integrations.twilio import twiml
from app.models import Agent, Call, PhoneNumber, Project
from app.phone import to_e164

log = logging.getLogger("talkstack.conversation.inbound")

NO_AGENT_MESSAGE = "Sorry, this number cannot take your call right now. Goodbye."


async def answer(ctx: AppContext, session: AsyncSession, params: Mapping[str, str]) -> str:
    """The TwiML that answers an inbound call: its agent (the call stored once, whatever
    Twilio's retries), or a polite goodbye if the number has none."""
    sid = params.get("CallSid", "")
    to, caller = _number(params.get("To", "")), _number(params.get("From", ""))
    target = await _inbound_target(session, to) if sid else None
    if target is None:
        log.info("inbound call %s to %s: no agent answers this number", sid, to)
        return twiml.say_and_hang_up(NO_AGENT_MESSAGE)
    number, agent, project = target
    call = await _inbound_call_row(session, sid)
    if call is None:
        variables = {"from": caller, "to": to}
        call = lifecycle.inbound(
            sid=sid,
            user_id=project.user_id,
            project_id=project.id,
            agent=agent,
            to=to,
            caller=caller,
            status=_initial_status(params.get("CallStatus", "")),
            variables=variables,
            system_instruction=render_lenient(agent.system_instruction, variables) or "",
            first_message=render_lenient(agent.first_message, variables),
        )
        try:
            async with session.begin_nested():
                session.add(call)
        except IntegrityError:
            # Twilio retried the webhook while the first attempt was being answered.
            call = await _inbound_call_row(session, sid)
            assert call is not None
        else:
            await lifecycle.answered_inbound(session, call, agent)
    log.info("inbound call %s to %s answered by agent %s", sid, number.e164, agent.id)
    return relay_twiml(ctx, call, agent)


async def status(session: AsyncSession, params: Mapping[str, str]) -> None:
    """An inbound call's status (the number's StatusCallback): the final status and duration."""
    sid = params.get("CallSid", "")
    call = await _inbound_call_row(session, sid, lock=True) if sid else None
    if call is None:
        log.warning("status callback for unknown inbound call %s ignored", sid)
    else:
        await callbacks.apply_status(session, call, params)


async def _inbound_call_row(session: AsyncSession, sid: str, *, lock: bool = False) -> Call | None:
    query = select(Call).where(Call.call_sid == sid)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


def _initial_status(twilio_status: str) -> str:
    if twilio_status in (CallStatus.RINGING, CallStatus.IN_PROGRESS):
        return twilio_status
    return CallStatus.RINGING


async def _inbound_target(
    session: AsyncSession, to: str
) -> tuple[PhoneNumber, Agent, Project] | None:
    row = (
        await session.execute(
            select(PhoneNumber, Agent, Project)
            .join(Agent, Agent.id == PhoneNumber.agent_id)
            .join(Project, Project.id == PhoneNumber.project_id)
            .where(
                PhoneNumber.e164 == to,
                Agent.is_deleted.is_(False),
                Project.is_deleted.is_(False),
            )
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


def _number(value: str) -> str:
    """Twilio's From/To as E.164 where possible (an anonymous caller's is not a number)."""
    try:
        return to_e164(value)
    except AppError:
        return value.strip()[:16]
