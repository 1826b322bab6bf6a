"""Twilio's requests to this server: a call's TwiML, status, recording and AMD callbacks, the
ConversationRelay socket and its end, a warm transfer's human leg, and inbound calls.

Not for users. Each handler is thin: the signature dependency (twilio_signature.py) proves the
request, a service decides (app/call/callbacks.py, app/conversation/*), the handler answers.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Response, WebSocket

from app.call import callbacks
from app.context import AppContext
from app.conversation import inbound, relay, transfer, voicemail
from app.conversation.documents import RELAY_PATH, relay_twiml
from app.deps import CtxDep, SessionDep
from app.integrations.twilio import twiml
from app.models import Agent
from app.web.twilio_signature import POLICY_VIOLATION, SIGNED, Params, socket_signed

log = logging.getLogger("talkstack.twilio")

router = APIRouter(tags=["twilio"])


def _xml(document: str) -> Response:
    return Response(document, media_type="application/xml")


# -- a call's own callbacks ---------------------------------------------------------------------


@router.post("/twilio/calls/{call_id}/twiml", responses=SIGNED, response_class=Response)
async def call_twiml(
    call_id: uuid.UUID, params: Params, ctx: CtxDep, session: SessionDep
) -> Response:
    """What the call does when answered: ConversationRelay, connected to the agent (TwiML)."""
    call = await callbacks.load_for_callback(session, call_id, params)
    if call is None:
        return _xml(twiml.hang_up())
    agent = await session.get(Agent, call.agent_id) if call.agent_id else None
    return _xml(relay_twiml(ctx, call, agent))


@router.post(
    "/twilio/calls/{call_id}/status", status_code=204, responses=SIGNED, response_class=Response
)
async def call_status(call_id: uuid.UUID, params: Params, ctx: CtxDep) -> Response:
    """Twilio's call-progress callback (written with the others arriving meanwhile: one
    transaction per batch, committed before this answers)."""
    await callbacks.status_ingest(ctx.sessionmaker).apply(call_id, params)
    return Response(status_code=204)


@router.post(
    "/twilio/calls/{call_id}/recording",
    status_code=204,
    responses=SIGNED,
    response_class=Response,
)
async def call_recording(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's recording-status callback."""
    call = await callbacks.load_for_callback(session, call_id, params)
    if call is not None:
        await callbacks.apply_recording(session, call, params)
    return Response(status_code=204)


@router.post(
    "/twilio/calls/{call_id}/amd", status_code=204, responses=SIGNED, response_class=Response
)
async def call_amd(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's asynchronous answering-machine-detection callback."""
    call = await callbacks.load_for_callback(session, call_id, params)
    if call is not None:
        await callbacks.apply_amd(session, call, params)
        await voicemail.after_amd(session, call, params)
    return Response(status_code=204)


# -- the conversation -------------------------------------------------------------------------


@router.websocket(RELAY_PATH)
async def relay_socket(websocket: WebSocket, call_id: uuid.UUID) -> None:
    """ConversationRelay's WebSocket for one call."""
    ctx: AppContext = websocket.app.state.ctx
    if not socket_signed(ctx, websocket):
        log.warning("refused a relay socket with a bad signature for call %s", call_id)
        await websocket.close(code=POLICY_VIOLATION)  # before accept: the client gets 403
        return
    loaded = await relay.live_call(ctx, call_id)
    if loaded is None:
        log.warning("relay socket for unknown or finished call %s refused", call_id)
        await websocket.close(code=POLICY_VIOLATION)
        return
    await websocket.accept()
    await relay.run_session(ctx, websocket, *loaded)


@router.post(
    "/twilio/calls/{call_id}/relay-ended",
    responses=SIGNED,
    response_class=Response,
    summary="Relay Ended",
)
async def relay_ended(
    call_id: uuid.UUID, params: Params, ctx: CtxDep, session: SessionDep
) -> Response:
    """ConversationRelay's session is over: hang up, or hand the callee to the agent's human
    colleague when the agent transferred the call."""
    return _xml(await transfer.session_ended(ctx, session, call_id, params))


@router.post("/twilio/calls/{call_id}/transfer-dialed", responses=SIGNED, response_class=Response)
async def transfer_dialed(
    call_id: uuid.UUID, params: Params, ctx: CtxDep, session: SessionDep
) -> Response:
    """The `<Dial>` of a cold transfer is over: hang up, or take the callee back to the agent
    when nobody answered."""
    return _xml(await transfer.human_dialed(ctx, session, call_id, params))


@router.post(
    "/twilio/calls/{call_id}/transfer-status",
    status_code=204,
    responses=SIGNED,
    response_class=Response,
)
async def transfer_status(call_id: uuid.UUID, params: Params, ctx: CtxDep) -> Response:
    """The progress of a warm transfer's call to the human (its own Call SID)."""
    # It runs its own transactions: Twilio is asked outside them (the callee may go back to
    # the agent).
    await transfer.human_leg_status(ctx, call_id, params)
    return Response(status_code=204)


@router.post("/twilio/calls/{call_id}/transfer-briefed", responses=SIGNED, response_class=Response)
async def transfer_briefed(
    call_id: uuid.UUID, params: Params, ctx: CtxDep, session: SessionDep
) -> Response:
    """The human of a warm transfer heard the briefing: put them through to the callee."""
    return _xml(await transfer.human_briefed(ctx, session, call_id, params))


@router.post(
    "/twilio/calls/{call_id}/transfer-joined",
    status_code=204,
    responses=SIGNED,
    response_class=Response,
)
async def transfer_joined(call_id: uuid.UUID, params: Params, ctx: CtxDep) -> Response:
    """Twilio's conference events for the human's leg of a warm transfer (`participant-join`)."""
    await transfer.human_joined(ctx, call_id, params)
    return Response(status_code=204)


# -- inbound calls ------------------------------------------------------------------------------


@router.post("/twilio/voice/inbound", responses=SIGNED, response_class=Response)
async def inbound_call(params: Params, ctx: CtxDep, session: SessionDep) -> Response:
    """A call to one of our numbers: its agent answers, or a polite goodbye if it has none."""
    return _xml(await inbound.answer(ctx, session, params))


@router.post("/twilio/voice/status", status_code=204, responses=SIGNED, response_class=Response)
async def inbound_status(params: Params, session: SessionDep) -> Response:
    """An inbound call's status (the number's StatusCallback): the final status and duration."""
    await inbound.status(session, params)
    return Response(status_code=204)
