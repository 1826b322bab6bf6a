"""The telephony dependency: the adapter the lifespan built, or 503 saying what to set."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.telephony.errors import TelephonyNotConfigured
from app.telephony.twilio import TwilioAdapter


async def require_telephony(request: Request) -> TwilioAdapter:
    telephony: TwilioAdapter | None = request.app.state.ctx.telephony
    if telephony is None:
        raise TelephonyNotConfigured()
    return telephony


TelephonyDep = Annotated[TwilioAdapter, Depends(require_telephony)]
