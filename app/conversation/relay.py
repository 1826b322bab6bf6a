"""One ConversationRelay session: the call's agent talking over the socket Twilio opened.

The handler (app/web/twilio.py) proves the socket's signature; this runs the conversation on
it, saves the transcript as it goes (transcript.py) and once more at its end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from sqlalchemy import select

from app.call import status as states
from app.context import AppContext
from app.conversation.session import Conversation, Script, Timing
from app.conversation.transcript import TranscriptSaver
from app.models import Agent, Call, Project

log = logging.getLogger("talkstack.conversation.relay")


async def live_call(ctx: AppContext, call_id: uuid.UUID) -> tuple[Call, Agent, str | None] | None:
    """The call, its agent, and the project's signing secret (for the agent's tools); None
    when the call is unknown, over, or has no agent."""
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


async def run_session(
    ctx: AppContext, websocket: WebSocket, call: Call, agent: Agent, secret: str | None
) -> None:
    """Talk on the accepted socket until the conversation ends; the transcript is saved."""
    # A call may have had a relay session before this one (its TwiML fetched again, a socket
    # reconnected): this session's turns follow that one's, which the agent remembers.
    earlier = list(call.transcript or [])
    saver = TranscriptSaver(ctx, call.id, earlier)
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
