"""Releasing numbers: the rows go, and Twilio stops sending their calls to this server.

An incoming number given to an agent had its voice URL pointed here (assign_number). When the
number is released (its agent deleted or given another number, its project deleted with
cascade), its row is deleted in the request's transaction and Twilio is told as the request's
last step, so a refusal anywhere before never touches Twilio; if Twilio refuses, the request
fails with 502, the transaction rolls back, and the numbers cleared before the failure are
pointed back here (they are still assigned). A concurrent assignment of the same number waits
for this transaction (the unique index on the number), so its pointing comes after ours.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.integrations.twilio.errors import TelephonyNotConfigured
from app.models import PhoneNumber

log = logging.getLogger("talkstack.phone_number")

# Where Twilio sends calls to an assigned number (served by the telephony routes).
INBOUND_VOICE_PATH = "/twilio/voice/inbound"
INBOUND_STATUS_PATH = "/twilio/voice/status"


async def point_here(ctx: AppContext, number_sid: str) -> None:
    """Send the incoming number's calls and their final status to this server."""
    base = ctx.settings.public_base_url
    await ctx.telephony.point_voice_url(
        number_sid, base + INBOUND_VOICE_PATH, status_callback=base + INBOUND_STATUS_PATH
    )


async def release_numbers(session: AsyncSession, *conditions: Any) -> list[str]:
    """Delete the numbers matching `conditions`; return the sids of the incoming ones, whose
    voice URL the caller clears with `clear_voice_urls` as the last step of its work."""
    released = (
        await session.execute(
            delete(PhoneNumber)
            .where(*conditions)
            .returning(PhoneNumber.twilio_sid, PhoneNumber.twilio_kind)
        )
    ).all()
    return sorted(sid for sid, kind in released if kind == "incoming")


async def clear_voice_urls(ctx: AppContext, sids: list[str]) -> None:
    """Stop Twilio sending the released numbers' calls here. If Twilio refuses, the error
    propagates (the request fails, its transaction rolls back) and the numbers cleared before
    it are pointed back here, where they are still assigned."""
    if not sids:
        return
    cleared: list[str] = []
    try:
        for sid in sids:
            await ctx.telephony.clear_voice_url(sid)
            cleared.append(sid)
    except TelephonyNotConfigured:
        # Pointed while Twilio was configured; nothing can reach Twilio now.
        log.warning("released %d Twilio number(s) without Twilio credentials", len(sids))
    except BaseException:
        await _point_back(ctx, cleared)
        raise


async def unpoint_quietly(ctx: AppContext, sid: str) -> None:
    """Best effort, while another error is on its way: clear the number's voice URL."""
    try:
        await ctx.telephony.clear_voice_url(sid)
    except TelephonyNotConfigured:
        pass
    except Exception:
        log.exception("could not clear the voice URL of %s", sid)


async def _point_back(ctx: AppContext, sids: list[str]) -> None:
    for sid in sids:
        try:
            await point_here(ctx, sid)
        except Exception:
            log.exception("could not point %s back at this server", sid)
