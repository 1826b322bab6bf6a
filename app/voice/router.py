"""/voices: the voices an agent can speak with."""

from __future__ import annotations

from fastapi import APIRouter

from app.errors import NotFound
from app.schemas import error_responses
from app.voice.deps import VoicesDep
from app.voice.schemas import VoiceListOut, VoiceOut

router = APIRouter(prefix="/voices", tags=["voices"])


@router.get("", response_model=VoiceListOut, responses=error_responses(401))
async def list_voices(voices: VoicesDep) -> VoiceListOut:
    """Every voice an agent can use: ElevenLabs' list, or the bundled premade voices."""
    return VoiceListOut(voices=await voices.list())


@router.get("/{voice_id}", response_model=VoiceOut, responses=error_responses(401, 404))
async def get_voice(voice_id: str, voices: VoicesDep) -> VoiceOut:
    """One voice by its ElevenLabs voice_id; 404 when the catalogue has no such voice."""
    voice = await voices.get(voice_id)
    if voice is None:
        raise NotFound("No voice with that voice_id; see GET /voices.", code="VOICE_NOT_FOUND")
    return VoiceOut(voice=voice)
