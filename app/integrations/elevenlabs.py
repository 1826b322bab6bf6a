"""The voice catalogue: ElevenLabs' live voice list, or the bundled premade voices.

Without ELEVENLABS_API_KEY the catalogue is `premade_voices.json`: ElevenLabs' default
("premade") voices with their real, public voice ids, which every ElevenLabs account and Twilio
ConversationRelay (`ttsProvider="ElevenLabs"`) accept. Its content is the `/v1/voices` entries of
those voices as ElevenLabs serves them, taken from a published `/v1/voices` dump
(github.com/Mohammed-Nur-030/MINIProject, nur.py) and checked against a second, independent list
(github.com/sheikgulf13/zoft_agent_saas_copy, utility/eleven-labs-voice.js): the same 20 ids and
preview URLs. Labels are kept as ElevenLabs wrote them ("middle aged" and "middle-aged" alike).

With a key, `GET {ELEVENLABS_API_BASE_URL}/v1/voices` is asked through one shared client, kept
for ELEVENLABS_CACHE_TTL_SECONDS, fetched once however many requests miss at the same moment,
and replaced by the last good list (or the bundled one) when ElevenLabs fails, so that listing
voices and creating agents keep working through an ElevenLabs outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from app.config import Settings

log = logging.getLogger("talkstack.voices")

BUNDLED_PATH = Path(__file__).with_name("premade_voices.json")
DEFAULT_TIMEOUT_SECONDS = 5.0
# After a failed fetch, ElevenLabs is asked again at most this often (or every TTL, if shorter):
# an outage must not make every request wait for a timeout.
RETRY_AFTER_FAILURE_SECONDS = 30.0

# ElevenLabs has written these labels under more than one name over time.
_LABEL_KEYS: dict[str, tuple[str, ...]] = {
    "accent": ("accent",),
    "description": ("description", "descriptive"),
    "age": ("age",),
    "gender": ("gender",),
    "use_case": ("use_case", "use case"),
}


class VoiceLabels(BaseModel):
    accent: str | None = None
    description: str | None = None
    age: str | None = None
    gender: str | None = None
    use_case: str | None = None

    model_config = ConfigDict(frozen=True)


class Voice(BaseModel):
    voice_id: str
    name: str
    labels: VoiceLabels
    preview_url: str | None = None

    model_config = ConfigDict(frozen=True)


class CatalogueError(Exception):
    """ElevenLabs' answer could not be used (network, status or body)."""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _labels(raw: Any) -> VoiceLabels:
    raw = raw if isinstance(raw, Mapping) else {}
    values = {
        field: next((v for k in keys if (v := _text(raw.get(k))) is not None), None)
        for field, keys in _LABEL_KEYS.items()
    }
    return VoiceLabels(**values)


def parse_voices(payload: Any) -> list[Voice]:
    """The voices of a `/v1/voices` body; entries without a voice_id or name are skipped."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("voices"), list):
        raise CatalogueError("the body has no 'voices' list")
    voices: list[Voice] = []
    seen: set[str] = set()
    for entry in payload["voices"]:
        if not isinstance(entry, Mapping):
            continue
        voice_id, name = _text(entry.get("voice_id")), _text(entry.get("name"))
        if voice_id is None or name is None or voice_id in seen:
            continue
        seen.add(voice_id)
        voices.append(
            Voice(
                voice_id=voice_id,
                name=name,
                labels=_labels(entry.get("labels")),
                preview_url=_text(entry.get("preview_url")),
            )
        )
    return voices


@lru_cache(maxsize=1)
def bundled_voices() -> tuple[Voice, ...]:
    return tuple(parse_voices(json.loads(BUNDLED_PATH.read_text(encoding="utf-8"))))


@dataclass(frozen=True)
class _Snapshot:
    voices: tuple[Voice, ...]
    by_id: Mapping[str, Voice]
    expires_at: float

    @classmethod
    def of(cls, voices: Sequence[Voice], expires_at: float) -> _Snapshot:
        return cls(tuple(voices), {v.voice_id: v for v in voices}, expires_at)


class Voices(Protocol):
    """What the app asks of the voice catalogue (VoiceCatalogue)."""

    @property
    def live(self) -> bool: ...

    async def list(self) -> list[Voice]: ...

    async def get(self, voice_id: str) -> Voice | None: ...

    async def exists(self, voice_id: str) -> bool: ...

    async def aclose(self) -> None: ...


class VoiceCatalogue:
    """The voices agents may speak with. Built once in the lifespan, shared by every request."""

    def __init__(
        self,
        bundled: Sequence[Voice],
        *,
        api_key: str | None = None,
        base_url: str = "https://api.elevenlabs.io",
        ttl_seconds: float = 300.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bundled = _Snapshot.of(bundled, expires_at=float("inf"))
        self._ttl = max(0.0, ttl_seconds)
        # Public so tests can move time; nothing else should touch it.
        self.clock = clock
        self._client: httpx.AsyncClient | None = None
        if api_key:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"ELEVENLABS_API_BASE_URL must be an http(s) URL: {base_url!r}")
            # trust_env=False: no proxy or .netrc from the environment may see the key.
            self._client = httpx.AsyncClient(
                base_url=base_url.rstrip("/"),
                headers={"xi-api-key": api_key, "accept": "application/json"},
                timeout=timeout_seconds,
                trust_env=False,
                follow_redirects=False,
                transport=transport,
            )
        self._current: _Snapshot | None = None
        self._last_good: tuple[Voice, ...] | None = None
        self._inflight: asyncio.Task[_Snapshot] | None = None

    @property
    def live(self) -> bool:
        """Whether the voices come from ElevenLabs (a key is configured)."""
        return self._client is not None

    async def list(self) -> list[Voice]:
        return list((await self._snapshot()).voices)

    async def get(self, voice_id: str) -> Voice | None:
        return (await self._snapshot()).by_id.get(voice_id)

    async def exists(self, voice_id: str) -> bool:
        return await self.get(voice_id) is not None

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        if self._client is not None:
            await self._client.aclose()

    async def _snapshot(self) -> _Snapshot:
        if self._client is None:
            return self._bundled
        current = self._current
        if current is not None and self.clock() < current.expires_at:
            return current
        # Single flight: every request that misses now awaits the same fetch. Shielded, so a
        # request that goes away (client disconnect) does not cancel it for the others.
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._refresh(self._client))
        return await asyncio.shield(self._inflight)

    async def _refresh(self, client: httpx.AsyncClient) -> _Snapshot:
        try:
            try:
                voices = await self._fetch(client)
            except CatalogueError as exc:
                return self._fall_back(str(exc))
            self._last_good = tuple(voices)
            self._current = _Snapshot.of(voices, self.clock() + self._ttl)
            return self._current
        finally:
            self._inflight = None

    async def _fetch(self, client: httpx.AsyncClient) -> Sequence[Voice]:
        try:
            response = await client.get("/v1/voices")
        except httpx.TimeoutException as exc:
            raise CatalogueError(f"timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise CatalogueError(f"request failed ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise CatalogueError(f"HTTP {response.status_code}{_detail(response)}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise CatalogueError("the body is not JSON") from exc
        return parse_voices(payload)

    def _fall_back(self, reason: str) -> _Snapshot:
        fallback, which = (
            (self._last_good, "the last list it returned")
            if self._last_good is not None
            else (self._bundled.voices, "the bundled premade voices")
        )
        log.warning("ElevenLabs voice list unavailable: %s; serving %s.", reason, which)
        retry = min(self._ttl, RETRY_AFTER_FAILURE_SECONDS)
        self._current = _Snapshot.of(fallback, self.clock() + retry)
        return self._current


def _detail(response: httpx.Response) -> str:
    """ElevenLabs' own reason (`{"detail": {"status": "invalid_api_key", ...}}`), if any."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    if isinstance(detail, Mapping) and isinstance(detail.get("status"), str):
        return f" ({detail['status'][:80]})"
    return ""


def build_voice_catalogue(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> VoiceCatalogue:
    return VoiceCatalogue(
        bundled_voices(),
        api_key=settings.elevenlabs_api_key,
        base_url=settings.elevenlabs_api_base_url,
        ttl_seconds=settings.elevenlabs_cache_ttl_seconds,
        transport=transport,
    )
