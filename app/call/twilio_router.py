"""Twilio's requests to this server about a call: TwiML, status, recording and AMD callbacks.

Not for users: each request must carry a valid X-Twilio-Signature for PUBLIC_BASE_URL + path.
"""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.call import callbacks
from app.conversation import voicemail
from app.conversation.documents import relay_twiml
from app.deps import CtxDep, SessionDep
from app.errors import BadRequest, Forbidden
from app.models import Agent, Call
from app.schemas import ErrorBody
from app.telephony import twiml
from app.telephony.errors import TelephonyNotConfigured

log = logging.getLogger("talkstack.call.twilio")

router = APIRouter(prefix="/twilio/calls", tags=["twilio"])


class _Fields(dict[str, list[str]]):
    """Form fields by name, every value kept (a field may repeat): what the signature covers.

    `getall` is the first accessor Twilio's RequestValidator tries; a plain dict or Starlette's
    FormData makes it raise and catch AttributeError once or twice per field and signature.
    """

    def getall(self, name: str) -> list[str]:
        return self[name]


# As many fields as Starlette's own form parser accepts.
_MAX_FIELDS = 1000


async def _form_fields(request: Request) -> _Fields:
    fields = _Fields()
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        # What Twilio posts. parse_qsl decodes as Starlette's form parser does (the bytes as
        # Latin-1, then %-escapes as UTF-8) for a fraction of its cost on a 30-field callback.
        body = (await request.body()).decode("latin-1")
        try:
            pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
        except ValueError as exc:
            raise BadRequest("Too many form fields.", code="VALIDATION_ERROR") from exc
        for name, value in pairs:
            fields.setdefault(name, []).append(value)
    else:
        for name, item in (await request.form()).multi_items():
            if isinstance(item, str):
                fields.setdefault(name, []).append(item)
    return fields


async def signed_params(request: Request) -> dict[str, str]:
    """The form Twilio posted, once its signature is proven; 403 otherwise."""
    ctx = request.app.state.ctx
    telephony = ctx.telephony
    if telephony is None:
        raise TelephonyNotConfigured()
    fields = await _form_fields(request)
    url = ctx.settings.public_base_url + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if not telephony.valid_signature(url, fields, request.headers.get("X-Twilio-Signature", "")):
        log.warning("refused a Twilio request with a bad signature on %s", request.url.path)
        raise Forbidden("Invalid X-Twilio-Signature.", code="INVALID_TWILIO_SIGNATURE")
    # A repeated field counts in the signature; the handlers read its last value.
    return {name: values[-1] for name, values in fields.items()}


Params = Annotated[dict[str, str], Depends(signed_params)]
_SIGNED: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Missing or invalid X-Twilio-Signature"}
}


async def _load(session: AsyncSession, call_id: uuid.UUID, params: dict[str, str]) -> Call | None:
    call = await session.get(Call, call_id, with_for_update=True)
    sid = params.get("CallSid")
    if call is None or not callbacks.same_call(call.call_sid, sid):
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
async def call_status(call_id: uuid.UUID, params: Params, ctx: CtxDep) -> Response:
    """Twilio's call-progress callback (written with the others arriving meanwhile: one
    transaction per batch, committed before this answers)."""
    await callbacks.status_ingest(ctx.sessionmaker).apply(call_id, params)
    return Response(status_code=204)


@router.post("/{call_id}/recording", status_code=204, responses=_SIGNED, response_class=Response)
async def call_recording(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's recording-status callback."""
    call = await _load(session, call_id, params)
    if call is not None:
        await callbacks.apply_recording(session, call, params)
    return Response(status_code=204)


@router.post("/{call_id}/amd", status_code=204, responses=_SIGNED, response_class=Response)
async def call_amd(call_id: uuid.UUID, params: Params, session: SessionDep) -> Response:
    """Twilio's asynchronous answering-machine-detection callback."""
    call = await _load(session, call_id, params)
    if call is not None:
        await callbacks.apply_amd(session, call, params)
        await voicemail.after_amd(session, call, params)
    return Response(status_code=204)
