"""An ElevenLabs stand-in: a real HTTP server on 127.0.0.1 that speaks `GET /v1/voices`.

The app reaches it through ELEVENLABS_API_BASE_URL with its real httpx client: the `xi-api-key`
header, ElevenLabs' voice objects (with all the fields the app ignores) and its error bodies
(`{"detail": {"status": ..., "message": ...}}`). Every request is recorded, and faults (5xx
answers, hangs, a body that is not JSON) can be injected.

Use the `elevenlabs_standin` fixture (one server per session, state reset for each test):

    async def test_x(elevenlabs_standin, settings_overrides):
        settings_overrides.update(elevenlabs_standin.settings_overrides())
        ...
        assert elevenlabs_standin.voice_list_calls == 1
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.standins.server import LocalServer, reset_around, running

API_KEY = "sk_standin_" + "0123456789abcdef" * 3

Record = dict[str, Any]


def voice_record(
    voice_id: str,
    name: str,
    labels: dict[str, str],
    *,
    category: str = "premade",
    preview_url: str | None = None,
) -> Record:
    """One entry of `/v1/voices`, every field ElevenLabs sends, not only the ones we read."""
    return {
        "voice_id": voice_id,
        "name": name,
        "samples": None,
        "category": category,
        "fine_tuning": {
            "is_allowed_to_fine_tune": category != "premade",
            "state": {},
            "verification_failures": [],
            "verification_attempts_count": 0,
            "manual_verification_requested": False,
            "language": "en",
            "progress": {},
            "message": {},
            "dataset_duration_seconds": None,
            "verification_attempts": None,
            "slice_ids": None,
            "manual_verification": None,
            "max_verification_attempts": 5,
            "next_max_verification_attempts_reset_unix_ms": 1700000000000,
        },
        "labels": labels,
        "description": None,
        "preview_url": preview_url
        or f"https://storage.googleapis.com/eleven-public-prod/{category}/voices/{voice_id}/x.mp3",
        "available_for_tiers": [],
        "settings": None,
        "sharing": None,
        "high_quality_base_model_ids": ["eleven_turbo_v2_5", "eleven_flash_v2_5"],
        "verified_languages": [],
        "safety_control": None,
        "voice_verification": {
            "requires_verification": False,
            "is_verified": False,
            "verification_failures": [],
            "verification_attempts_count": 0,
            "language": None,
            "verification_attempts": None,
        },
        "permission_on_resource": None,
        "is_owner": category != "premade",
        "is_legacy": False,
        "is_mixed": False,
        "created_at_unix": None,
    }


def default_voices() -> list[Record]:
    """An account's list: a premade voice, a cloned one with today's label names
    (`descriptive`, extra `language`), and one with no labels at all."""
    return [
        voice_record(
            "CwhRBWXzGAHq8TQ4Fs17",
            "Roger",
            {
                "accent": "American",
                "description": "confident",
                "age": "middle-aged",
                "gender": "male",
                "use_case": "social media",
            },
        ),
        voice_record(
            "StandinCloneVoice001",
            "Ada (clone)",
            {
                "accent": "british",
                "descriptive": "calm",
                "age": "young",
                "gender": "female",
                "language": "en",
                "use case": "conversational",
            },
            category="cloned",
        ),
        voice_record("StandinBareVoice0002", "Bare", {}, category="generated"),
    ]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Fault:
    kind: str  # "status", "hang" or "garbage"
    status: int = 500
    seconds: float = 0.0


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": {"status": kind, "message": message}}, status_code=status)


@dataclass
class _State:
    voices: list[Record] = field(default_factory=default_voices)
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: deque[_Fault] = field(default_factory=deque)
    latency: float = 0.0


class ElevenLabsStandin:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.state = _State()
        self._lock = threading.Lock()
        self._release = threading.Event()
        app = Starlette(routes=[Route("/v1/voices", self._list_voices, methods=["GET"])])
        self._server = LocalServer(app, "elevenlabs-standin")

    # -- the wire ----------------------------------------------------------------------------

    async def _list_voices(self, request: Request) -> Response:
        with self._lock:
            self.state.requests.append(
                RecordedRequest(
                    request.method,
                    request.url.path,
                    {k.lower(): v for k, v in request.headers.items()},
                )
            )
            fault = self.state.faults.popleft() if self.state.faults else None
            latency = self.state.latency
            release = self._release
            voices = [dict(v) for v in self.state.voices]
        if latency:
            await asyncio.sleep(latency)
        if fault is not None and fault.kind == "hang":
            # Until `seconds` pass or the test ends, whichever is first.
            await asyncio.to_thread(release.wait, fault.seconds)
        if fault is not None and fault.kind == "status":
            return _error(fault.status, "internal_error", "An internal server error occurred.")
        key = request.headers.get("xi-api-key")
        if not key:
            return _error(
                401,
                "needs_authorization",
                "Neither authorization header nor xi-api-key received, please provide one.",
            )
        if key != self.api_key:
            return _error(401, "invalid_api_key", "Invalid API key")
        if fault is not None and fault.kind == "garbage":
            return Response("<html>502 Bad Gateway</html>", media_type="text/html")
        return JSONResponse({"voices": voices})

    # -- faults and data ---------------------------------------------------------------------

    def fail_next(self, count: int = 1, *, status: int = 500) -> None:
        """The next `count` requests answer `status` with ElevenLabs' error body."""
        with self._lock:
            self.state.faults.extend(_Fault("status", status=status) for _ in range(count))

    def hang_next(self, count: int = 1, *, seconds: float = 30.0) -> None:
        """The next `count` requests wait `seconds` (or until reset) before being answered."""
        with self._lock:
            self.state.faults.extend(_Fault("hang", seconds=seconds) for _ in range(count))

    def garble_next(self, count: int = 1) -> None:
        """The next `count` requests answer 200 with an HTML body."""
        with self._lock:
            self.state.faults.extend(_Fault("garbage") for _ in range(count))

    def set_latency(self, seconds: float) -> None:
        """Every request takes this long, so that concurrent callers overlap."""
        with self._lock:
            self.state.latency = seconds

    def set_voices(self, voices: list[Record]) -> None:
        with self._lock:
            self.state.voices = list(voices)

    # -- what was asked ----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.state.requests)

    @property
    def voice_list_calls(self) -> int:
        return sum(1 for r in self.requests if r.path == "/v1/voices")

    # -- configuration -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def settings_overrides(self) -> dict[str, Any]:
        """Settings that point the app at this stand-in with a working key."""
        return {"elevenlabs_api_key": self.api_key, "elevenlabs_api_base_url": self.base_url}

    def reset(self) -> None:
        """Back to the default voices; forget requests and faults; release hanging requests."""
        with self._lock:
            self._release.set()
            self._release = threading.Event()
            self.state = _State()

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._release.set()
        self._server.stop()


@pytest.fixture(scope="session")
def elevenlabs_standin_server() -> Iterator[ElevenLabsStandin]:
    with running(ElevenLabsStandin()) as standin:
        yield standin


@pytest.fixture
def elevenlabs_standin(
    elevenlabs_standin_server: ElevenLabsStandin,
) -> Iterator[ElevenLabsStandin]:
    """The session's ElevenLabs stand-in with its default voices, no requests, no faults."""
    with reset_around(elevenlabs_standin_server) as standin:
        yield standin
