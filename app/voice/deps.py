"""The voice catalogue dependency: the one the lifespan built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.integrations.elevenlabs import Voices


async def get_voices(request: Request) -> Voices:
    voices: Voices = request.app.state.ctx.voices
    return voices


VoicesDep = Annotated[Voices, Depends(get_voices)]
