"""The /voices envelopes, as Talkstack's List Voices and Get Voice pages show them.

The reference: docs/api/agents.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.integrations.elevenlabs import Voice

# The docs' message for both endpoints; "list" even when one voice is returned.
FETCHED = "successfully fetched voice list."

VOICE_EXAMPLE: dict[str, Any] = {
    "voice_id": "9BWtsMINqrJLrRacOk9x",
    "name": "Aria",
    "labels": {
        "accent": "American",
        "description": "expressive",
        "age": "middle-aged",
        "gender": "female",
        "use_case": "social media",
    },
    "preview_url": "https://storage.googleapis.com/eleven-public-prod/premade/voices/"
    "9BWtsMINqrJLrRacOk9x/405766b8-1f4e-4d3c-aba1-6f25333823ec.mp3",
}
_ROGER_EXAMPLE: dict[str, Any] = {
    "voice_id": "CwhRBWXzGAHq8TQ4Fs17",
    "name": "Roger",
    "labels": {
        "accent": "American",
        "description": "confident",
        "age": "middle-aged",
        "gender": "male",
        "use_case": "social media",
    },
    "preview_url": "https://storage.googleapis.com/eleven-public-prod/premade/voices/"
    "CwhRBWXzGAHq8TQ4Fs17/58ee3ff5-f6f2-4628-93b8-e38eb31806b0.mp3",
}


class VoiceListOut(BaseModel):
    message: str = FETCHED
    status: Literal["success"] = "success"
    voices: list[Voice]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": FETCHED,
                "status": "success",
                "voices": [VOICE_EXAMPLE, _ROGER_EXAMPLE],
            }
        }
    )


class VoiceOut(BaseModel):
    message: str = FETCHED
    status: Literal["success"] = "success"
    voice: Voice

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"message": FETCHED, "status": "success", "voice": VOICE_EXAMPLE}
        }
    )
