"""Twilio's side of the conversation: the ConversationRelay socket, its end, inbound calls.

Not for users. Every request proves itself with X-Twilio-Signature (the socket's upgrade
request too): a bad or missing signature is 403 and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response, WebSocket, WebSocketDisconnect
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.call import callbacks
from app.call import status as states
from app.call.events import call_changed
from app.call.jobs import schedule_check
from app.call.render import render_lenient
from app.call.twilio_router import _SIGNED, Params
from app.context import AppContext
from app.conversation import transfer
from app.conversation.documents import RELAY_PATH, relay_twiml, ws_base
from app.conversation.session import Conversation, Script, Timing
from app.conversation.transcript import TranscriptSaver
from app.deps import CtxDep, SessionDep
from app.errors import AppError
from app.models import Agent, Call, PhoneNumber, Project
from app.phone import to_e164
from app.telephony import twiml

log = logging.getLogger("talkstack.conversation.relay")

router = APIRouter(tags=["twilio"])

NO_AGENT_MESSAGE = "Sorry, this number cannot take your call right now. Goodbye."
# Twilio's WebSocket close code for "policy violation": what a bad signature gets.
_POLICY = 1008


def _xml(document: str) -> Response:
    return Response(document, media_type="application/xml")


# -- the socket ----------------------------------------------------------------------------


@router.websocket(RELAY_PATH)
async def relay(websocket: WebSocket, call_id: uuid.UUID) -> None:
    """ConversationRelay's WebSocket for one call."""
    ctx: AppContext = websocket.app.state.ctx
    telephony = ctx.telephony
    url = ws_base(ctx.settings.public_base_url) + websocket.url.path
    if websocket.url.query:
        url += "?" + websocket.url.query
    signature = websocket.headers.get("x-twilio-signature")
    if telephony is None or not telephony.valid_signature(url, {}, signature):
        log.warning("refused a relay socket with a bad signature for call %s", call_id)
        await websocket.close(code=_POLICY)  # before accept: the client gets HTTP 403
        return
    loaded = await _live_call(ctx, call_id)
    if loaded is None:
        log.warning("relay socket for unknown or finished call %s refused", call_id)
        await websocket.close(code=_POLICY)
        return
    call, agent, secret = loaded
    await websocket.accept()
    # A call may have had a relay session before this one (its TwiML fetched again, a socket
    # reconnected): this session's turns follow that one's, which the agent remembers.
    earlier = list(call.transcript or [])
    saver = TranscriptSaver(ctx, call_id, earlier)
    settings = ctx.settings
    conversation = Conversation(
        Script(
            system_instruction=call.system_instruction,
            first_message=call.first_message,
            language=agent.language,
            max_duration_seconds=agent.max_call_duration_seconds,
            transfer_number=agent.transfer_number,
            transfer_mode=agent.transfer_mode,
            tools=tuple(agent.tools),
            keypad=call.direction == "outbound",
        ),
        ctx.llm,
        _sender(websocket),
        timing=Timing(
            silence_seconds=settings.conversation_silence_seconds,
            reprompts=settings.conversation_reprompts,
            speech_chars_per_second=settings.conversation_speech_chars_per_second,
        ),
        on_turn=saver.later,
        run_tool=_tool_runner(ctx, call, secret) if agent.tools else None,
        earlier=earlier,
    )
    try:
        await conversation.run(_messages(websocket, call.call_sid))
    finally:
        await saver.finish(conversation)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _live_call(ctx: AppContext, call_id: uuid.UUID) -> tuple[Call, Agent, str | None] | None:
    """The call, its agent, and the project's signing secret (for the agent's tools)."""
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
        if call is None or call.status in states.FINAL or call.agent_id is None:
            return None
        agent = await session.get(Agent, call.agent_id)
        if agent is None:
            return None
        secret = None
        if agent.tools:
            secret = await session.scalar(
                select(Project.webhook_secret).where(Project.id == call.project_id)
            )
        return call, agent, secret


def _tool_runner(ctx: AppContext, call: Call, secret: str | None) -> Any:
    """Runs the agent's custom tools for this call; each request says which call it is for."""
    about = {
        "callSid": call.call_sid,
        "callId": str(call.id),
        "agentId": str(call.agent_id),
        "projectId": str(call.project_id),
        "direction": call.direction,
        "from": call.from_number,
        "to": call.to_number,
        "dynamicVariables": dict(call.dynamic_variables),
    }

    async def run(tool: dict[str, Any], arguments: dict[str, Any]) -> str:
        return await ctx.tool_webhooks.call(tool, arguments, call=about, secret=secret)

    return run


def _sender(websocket: WebSocket) -> Any:
    async def send(message: dict[str, Any]) -> None:
        await websocket.send_text(json.dumps(message, ensure_ascii=False))

    return send


async def _messages(websocket: WebSocket, call_sid: str | None) -> AsyncIterator[dict[str, Any]]:
    while True:
        try:
            raw = await websocket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            return
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("unreadable ConversationRelay message ignored")
            continue
        if not isinstance(message, dict):
            continue
        if message.get("type") == "setup" and call_sid and message.get("callSid") != call_sid:
            log.warning("relay setup for call %s names another CallSid", call_sid)
            return
        yield message


# -- Twilio's requests ---------------------------------------------------------------------


@router.post(
    "/twilio/calls/{call_id}/relay-ended",
    responses=_SIGNED,
    response_class=Response,
    summary="Relay Ended",
)
async def relay_ended(
    call_id: uuid.UUID, params: Params, ctx: CtxDep, session: SessionDep
) -> Response:
    """ConversationRelay's session is over: hang up, or hand the callee to the agent's human
    colleague when the agent transferred the call."""
    handoff = _handoff(params.get("HandoffData", ""))
    log.info(
        "relay for call %s ended: %s (%s)",
        call_id,
        params.get("SessionStatus", ""),
        handoff.get("reason", "no reason given"),
    )
    target = handoff.get("transfer")
    if handoff.get("reason") == transfer.TRANSFERRED and isinstance(target, dict):
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
            and transfer.may_transfer(call)
        ):
            return _xml(await transfer.hand_over(ctx, session, call, agent, target))
        log.warning("call %s: a transfer that does not match its agent was refused", call_id)
    return _xml(twiml.hang_up())


def _handoff(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@router.post(
    "/twilio/calls/{call_id}/transfer-status",
    status_code=204,
    responses=_SIGNED,
    response_class=Response,
)
async def transfer_status(call_id: uuid.UUID, params: Params, ctx: CtxDep) -> Response:
    """The progress of a warm transfer's call to the human (its own Call SID)."""
    # It runs its own transactions: Twilio is asked outside them (the callee may go back to
    # the agent).
    await transfer.human_leg_status(ctx, call_id, params)
    return Response(status_code=204)


@router.post(
    "/twilio/calls/{call_id}/transfer-joined",
    status_code=204,
    responses=_SIGNED,
    response_class=Response,
)
async def transfer_joined(call_id: uuid.UUID, params: Params, ctx: CtxDep) -> Response:
    """Twilio's conference events for the human's leg of a warm transfer (`participant-join`)."""
    await transfer.human_joined(ctx, call_id, params)
    return Response(status_code=204)


@router.post("/twilio/voice/inbound", responses=_SIGNED, response_class=Response)
async def inbound_call(params: Params, ctx: CtxDep, session: SessionDep) -> Response:
    """A call to one of our numbers: its agent answers, or a polite goodbye if it has none."""
    sid = params.get("CallSid", "")
    to, caller = _number(params.get("To", "")), _number(params.get("From", ""))
    target = await _inbound_target(session, to) if sid else None
    if target is None:
        log.info("inbound call %s to %s: no agent answers this number", sid, to)
        return _xml(twiml.say_and_hang_up(NO_AGENT_MESSAGE))
    number, agent, project = target
    call = await _inbound_call_row(session, sid)
    if call is None:
        variables = {"from": caller, "to": to}
        call = Call(
            call_sid=sid,
            user_id=project.user_id,
            project_id=project.id,
            agent_id=agent.id,
            direction="inbound",
            to_number=to,
            from_number=caller,
            status=_initial_status(params.get("CallStatus", "")),
            dynamic_variables=variables,
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
            await call_changed(session, call)
            await schedule_check(session, call, max_seconds=agent.max_call_duration_seconds)
    log.info("inbound call %s to %s answered by agent %s", sid, number.e164, agent.id)
    return _xml(relay_twiml(ctx, call, agent))


@router.post("/twilio/voice/status", status_code=204, responses=_SIGNED, response_class=Response)
async def inbound_status(params: Params, session: SessionDep) -> Response:
    """An inbound call's status (the number's StatusCallback): the final status and duration."""
    sid = params.get("CallSid", "")
    call = await _inbound_call_row(session, sid, lock=True) if sid else None
    if call is None:
        log.warning("status callback for unknown inbound call %s ignored", sid)
    else:
        await callbacks.apply_status(session, call, params)
    return Response(status_code=204)


async def _inbound_call_row(session: AsyncSession, sid: str, *, lock: bool = False) -> Call | None:
    query = select(Call).where(Call.call_sid == sid)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


def _initial_status(twilio_status: str) -> str:
    return twilio_status if twilio_status in ("ringing", "in-progress") else "ringing"


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
