"""Twilio's requests to this server about a call: TwiML, status, recording and AMD callbacks.

Not for users: each request must carry a valid X-Twilio-Signature for PUBLIC_BASE_URL + path.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.call import callbacks
from app.conversation.documents import relay_twiml
from app.deps import CtxDep, SessionDep
from app.errors import Forbidden
from app.models import Agent, Call
from app.schemas import ErrorBody
from app.telephony import twiml
from app.telephony.errors import TelephonyNotConfigured

log = logging.getLogger("talkstack.call.twilio")

router = APIRouter(prefix="/twilio/calls", tags=["twilio"])


async def signed_params(request: Request) -> dict[str, str]:
    """The form Twilio posted, once its signature is proven; 403 otherwise."""
    ctx = request.app.state.ctx
    telephony = ctx.telephony
    if telephony is None:
        raise TelephonyNotConfigured()
    form = await request.form()
    url = ctx.settings.public_base_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if not telephony.valid_signature(url, form, request.headers.get("X-Twilio-Signature", "")):
        log.warning("refused a Twilio request with a bad signature on %s", request.url.path)
        raise Forbidden("Invalid X-Twilio-Signature.", code="INVALID_TWILIO_SIGNATURE")
    return {k: v for k, v in form.items() if isinstance(v, str)}


Params = Annotated[dict[str, str], Depends(signed_params)]
_SIGNED: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Missing or invalid X-Twilio-Signature"}
}


async def _load(session: AsyncSession, call_id: uuid.UUID, params: dict[str, str]) -> Call | None:
    call = await session.get(Call, call_id, with_for_update=True)
    sid = params.get("CallSid")
    if call is None or (call.call_sid is not None and sid and sid != call.call_sid):
        log.warning("Twilio callback for unknown call %s (CallSid %s) ignored", call_id, sid)
        return None
    if call.call_sid is None and sid:
        call.call_sid = sid  # the callback beat place_call to storing the SID
    return call


@router.post("/{call_id}/twiml", responses=_SIGNED, response_class=Response)
async def call_twiml(
    call_id: uuid.UUID, params: Params, ctx: CtxDep, session: SessionDep
) -> Response:
    """What the call does when answered: ConversationRelay, connected to the agent (TwiML)."""
    call = await _load(session, call_id, params)
    if call is None:
        return Response(twiml.hang_up(), media_type="application/xml")
    agent = await session.get(Agent, call.agent_id) if call.agent_id else None
    return Response(relay_twiml(ctx, call, agent), media_type="application/xml")


@router.post("/{call_id}/status", status_code=204, responses=_SIGNED, response_class=Response)
async def call_status(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's call-progress callback."""
    call = await _load(session, call_id, params)
    if call is not None:
        await callbacks.apply_status(session, call, params)
    return Response(status_code=204)


@router.post("/{call_id}/recording", status_code=204, responses=_SIGNED, response_class=Response)
async def call_recording(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's recording-status callback."""
    call = await _load(session, call_id, params)
    if call is not None:
        callbacks.apply_recording(call, params)
    return Response(status_code=204)


@router.post("/{call_id}/amd", status_code=204, responses=_SIGNED, response_class=Response)
async def call_amd(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's asynchronous answering-machine-detection callback."""
    call = await _load(session, call_id, params)
    if call is not None:
        await callbacks.apply_amd(session, call, params)
    return Response(status_code=204)
