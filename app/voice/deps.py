"""The voice catalogue dependency: the one the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.integrations.elevenlabs import VoiceCatalogue


async def get_voices(request: Request) -> VoiceCatalogue:
    voices: VoiceCatalogue = request.app.state.ctx.voices
    return voices


VoicesDep = Annotated[VoiceCatalogue, Depends(get_voices)]
