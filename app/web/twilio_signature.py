"""The one proof every request from Twilio gives: X-Twilio-Signature over PUBLIC_BASE_URL +
the request's path and query (and, for a form POST, its fields).

`Params` (HTTP) and `socket_signed` (the relay WebSocket's upgrade request) are the only
checks; a handler that takes `Params` runs only for a request Twilio signed. A bad or missing
signature is 403 (a WebSocket is closed with 1008 before it is accepted: the client sees 403)
and changes nothing. With Twilio not configured, the port's stand-in refuses (503).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request, WebSocket

from app.context import AppContext
from app.conversation.documents import ws_base
from app.errors import BadRequest, Forbidden
from app.integrations.twilio.errors import TelephonyNotConfigured
from app.schemas import ErrorBody

log = logging.getLogger("talkstack.twilio.signature")

# Twilio's WebSocket close code for "policy violation": what a bad signature gets.
POLICY_VIOLATION = 1008


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


def _public_url(ctx: AppContext, path: str, query: str) -> str:
    """The URL Twilio called, as it signed it (a proxy may have changed scheme and host)."""
    return ctx.settings.public_base_url + path + (f"?{query}" if query else "")


async def signed_params(request: Request) -> dict[str, str]:
    """The form Twilio posted, once its signature is proven; 403 otherwise."""
    ctx: AppContext = request.app.state.ctx
    ctx.telephony.ensure_configured()  # 503 before the body is read
    fields = await _form_fields(request)
    url = _public_url(ctx, request.url.path, request.url.query)
    signature = request.headers.get("X-Twilio-Signature", "")
    if not ctx.telephony.valid_signature(url, fields, signature):
        log.warning("refused a Twilio request with a bad signature on %s", request.url.path)
        raise Forbidden("Invalid X-Twilio-Signature.", code="INVALID_TWILIO_SIGNATURE")
    # A repeated field counts in the signature; the handlers read its last value.
    return {name: values[-1] for name, values in fields.items()}


Params = Annotated[dict[str, str], Depends(signed_params)]
# What a signed route may answer besides its own response, for the OpenAPI document.
SIGNED: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Missing or invalid X-Twilio-Signature"}
}


def socket_signed(ctx: AppContext, websocket: WebSocket) -> bool:
    """Whether the relay socket's upgrade request carries Twilio's signature (no form: the
    URL alone is signed, as Twilio opened it: wss://)."""
    query = websocket.url.query
    url = ws_base(ctx.settings.public_base_url) + websocket.url.path
    url += f"?{query}" if query else ""
    signature = websocket.headers.get("x-twilio-signature")
    try:
        return ctx.telephony.valid_signature(url, {}, signature)
    except TelephonyNotConfigured:
        return False
