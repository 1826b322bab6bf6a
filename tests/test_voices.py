"""/voices: the bundled premade catalogue, and ElevenLabs' live list cached and single-flight."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import httpx
import pytest

from app.integrations.elevenlabs import VoiceCatalogue, bundled_voices
from tests.factories import api_key_for, assert_error, verified_account
from tests.standins import elevenlabs as standin
from tests.standins.elevenlabs import API_KEY, ElevenLabsStandin

# The stand-in's fixtures, for this module (tests/conftest.py's pytest_plugins would share them).
elevenlabs_standin_server = standin.elevenlabs_standin_server
elevenlabs_standin = standin.elevenlabs_standin

FETCHED = "successfully fetched voice list."
VOICE_KEYS = {"voice_id", "name", "labels", "preview_url"}
LABEL_KEYS = {"accent", "description", "age", "gender", "use_case"}
ELEVENLABS_ID = re.compile(r"^[A-Za-z0-9]{20}$")
ARIA: dict[str, Any] = {
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
# What the app makes of the stand-in's default voices (tests/standins/elevenlabs.py).
LIVE = [
    {
        "voice_id": "CwhRBWXzGAHq8TQ4Fs17",
        "name": "Roger",
        "labels": {
            "accent": "American",
            "description": "confident",
            "age": "middle-aged",
            "gender": "male",
            "use_case": "social media",
        },
    },
    {
        "voice_id": "StandinCloneVoice001",
        "name": "Ada (clone)",
        # ElevenLabs' newer label names ("descriptive", "use case") read as the contract's.
        "labels": {
            "accent": "british",
            "description": "calm",
            "age": "young",
            "gender": "female",
            "use_case": "conversational",
        },
    },
    {
        "voice_id": "StandinBareVoice0002",
        "name": "Bare",
        "labels": dict.fromkeys(LABEL_KEYS),
    },
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def auth(client: httpx.AsyncClient, mailbox: Any) -> dict[str, str]:
    account = await verified_account(client, mailbox)
    return {"x-api-key": await api_key_for(client, account)}


def without_previews(voices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in voice.items() if k != "preview_url"} for voice in voices]


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "talkstack.voices" and r.levelno == logging.WARNING
    ]


# --- credentials ---------------------------------------------------------------------------


async def test_voices_need_credentials(client: httpx.AsyncClient):
    for path in ("/voices", f"/voices/{ARIA['voice_id']}", "/voices/nope"):
        assert_error(await client.get(path), 401, "UNAUTHORIZED")
        assert_error(await client.get(path, headers={"x-api-key": "wrong"}), 401, "INVALID_API_KEY")


async def test_a_bearer_token_works_too(client: httpx.AsyncClient, mailbox: Any):
    account = await verified_account(client, mailbox)
    r = await client.get("/voices", headers=account.bearer)
    assert r.status_code == 200, r.text


# --- the bundled catalogue (no ELEVENLABS_API_KEY) -----------------------------------------


async def test_bundled_catalogue_lists_elevenlabs_premade_voices(
    client: httpx.AsyncClient, auth: dict[str, str]
):
    r = await client.get("/voices", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"message", "status", "voices"}
    assert body["message"] == FETCHED and body["status"] == "success"
    voices = body["voices"]
    assert len(voices) >= 20
    assert len({v["voice_id"] for v in voices}) == len(voices)
    for voice in voices:
        assert set(voice) == VOICE_KEYS, voice
        assert ELEVENLABS_ID.match(voice["voice_id"]), voice
        assert voice["name"]
        assert set(voice["labels"]) == LABEL_KEYS, voice
        assert all(isinstance(v, str) and v for v in voice["labels"].values()), voice
        prefix = "https://storage.googleapis.com/eleven-public-prod/premade/voices/"
        assert voice["preview_url"].startswith(f"{prefix}{voice['voice_id']}/"), voice
        assert voice["preview_url"].endswith(".mp3"), voice
    # Talkstack's own List Voices example is the first voice: Aria, then Roger.
    assert voices[0] == ARIA
    assert voices[1]["name"] == "Roger" and voices[1]["voice_id"] == "CwhRBWXzGAHq8TQ4Fs17"
    assert "EXAVITQu4vr4xnSDxMaL" in {v["voice_id"] for v in voices}  # Sarah


async def test_get_one_bundled_voice(client: httpx.AsyncClient, auth: dict[str, str]):
    r = await client.get(f"/voices/{ARIA['voice_id']}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"message": FETCHED, "status": "success", "voice": ARIA}


async def test_unknown_voice_is_404(client: httpx.AsyncClient, auth: dict[str, str]):
    for voice_id in ("nope", "9BWtsMINqrJLrRacOk9X", "21m00Tcm4TlvDq8ikWAM" + "x"):
        assert_error(await client.get(f"/voices/{voice_id}", headers=auth), 404, "VOICE_NOT_FOUND")


def test_bundled_file_is_read_once_and_complete():
    voices = bundled_voices()
    assert voices is bundled_voices()
    assert len(voices) >= 20
    assert all(v.preview_url and v.labels.gender for v in voices)


# --- the live catalogue (ELEVENLABS_API_KEY set) -------------------------------------------


class TestLiveCatalogue:
    @pytest.fixture
    def settings_overrides(self, elevenlabs_standin: ElevenLabsStandin) -> dict[str, Any]:
        return {**elevenlabs_standin.settings_overrides(), "elevenlabs_cache_ttl_seconds": 300}

    @pytest.fixture
    def clock(self, app: Any) -> Clock:
        clock = Clock()
        app.state.ctx.voices.clock = clock
        return clock

    async def test_the_live_list_is_served(
        self, client: httpx.AsyncClient, auth: dict[str, str], elevenlabs_standin
    ):
        r = await client.get("/voices", headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["message"] == FETCHED and body["status"] == "success"
        assert without_previews(body["voices"]) == LIVE
        assert all(set(v) == VOICE_KEYS for v in body["voices"])
        [request] = elevenlabs_standin.requests
        assert request.method == "GET" and request.path == "/v1/voices"
        assert request.headers["xi-api-key"] == API_KEY

    async def test_get_reads_the_live_list(
        self, client: httpx.AsyncClient, auth: dict[str, str], elevenlabs_standin
    ):
        r = await client.get("/voices/StandinCloneVoice001", headers=auth)
        assert r.status_code == 200, r.text
        assert without_previews([r.json()["voice"]]) == [LIVE[1]]
        # A bundled voice the account does not list is not a voice here.
        r = await client.get(f"/voices/{ARIA['voice_id']}", headers=auth)
        assert_error(r, 404, "VOICE_NOT_FOUND")
        assert elevenlabs_standin.voice_list_calls == 1

    async def test_the_list_is_cached_for_the_ttl(
        self, client: httpx.AsyncClient, auth: dict[str, str], elevenlabs_standin, clock
    ):
        for _ in range(3):
            assert (await client.get("/voices", headers=auth)).status_code == 200
        assert (await client.get("/voices/StandinBareVoice0002", headers=auth)).status_code == 200
        assert elevenlabs_standin.voice_list_calls == 1

        clock.now += 299
        assert (await client.get("/voices", headers=auth)).status_code == 200
        assert elevenlabs_standin.voice_list_calls == 1

        elevenlabs_standin.set_voices([])
        clock.now += 2
        r = await client.get("/voices", headers=auth)
        assert r.json()["voices"] == []
        assert elevenlabs_standin.voice_list_calls == 2

    async def test_concurrent_misses_make_one_upstream_request(
        self, client: httpx.AsyncClient, auth: dict[str, str], elevenlabs_standin
    ):
        elevenlabs_standin.set_latency(0.3)
        paths = ["/voices", "/voices/CwhRBWXzGAHq8TQ4Fs17", "/voices/nope"] * 4
        responses = await asyncio.gather(*(client.get(p, headers=auth) for p in paths))
        assert [r.status_code for r in responses] == [200, 200, 404] * 4
        assert elevenlabs_standin.voice_list_calls == 1

    @pytest.mark.parametrize("fault", ["500", "503", "garbage", "401"])
    async def test_upstream_failure_falls_back_to_the_bundled_voices(
        self,
        client: httpx.AsyncClient,
        auth: dict[str, str],
        elevenlabs_standin,
        caplog: pytest.LogCaptureFixture,
        fault: str,
    ):
        if fault == "garbage":
            elevenlabs_standin.garble_next()
        elif fault == "401":
            elevenlabs_standin.api_key = "sk_another_key"
        else:
            elevenlabs_standin.fail_next(status=int(fault))
        try:
            with caplog.at_level(logging.WARNING, logger="talkstack.voices"):
                r = await client.get("/voices", headers=auth)
        finally:
            elevenlabs_standin.api_key = API_KEY
        assert r.status_code == 200, r.text
        assert r.json()["voices"][0] == ARIA
        assert len(r.json()["voices"]) == len(bundled_voices())
        [warning] = warnings_in(caplog)
        assert "bundled premade voices" in warning
        expected = {"garbage": "not JSON", "401": "HTTP 401 (invalid_api_key)"}
        assert expected.get(fault, f"HTTP {fault}") in warning
        assert API_KEY not in caplog.text

    async def test_failure_serves_the_last_good_list_and_retries_later(
        self,
        client: httpx.AsyncClient,
        auth: dict[str, str],
        elevenlabs_standin,
        clock,
        caplog: pytest.LogCaptureFixture,
    ):
        r = await client.get("/voices", headers=auth)
        assert without_previews(r.json()["voices"]) == LIVE

        clock.now += 301
        elevenlabs_standin.fail_next(status=502)
        with caplog.at_level(logging.WARNING, logger="talkstack.voices"):
            r = await client.get("/voices", headers=auth)
        assert r.status_code == 200
        assert without_previews(r.json()["voices"]) == LIVE
        [warning] = warnings_in(caplog)
        assert "last list" in warning and "HTTP 502" in warning
        assert elevenlabs_standin.voice_list_calls == 2

        # An outage is not asked about on every request...
        clock.now += 10
        assert (await client.get("/voices", headers=auth)).status_code == 200
        assert elevenlabs_standin.voice_list_calls == 2
        # ...but it is asked again soon, and the fresh list replaces the fallback.
        elevenlabs_standin.set_voices([])
        clock.now += 25
        assert (await client.get("/voices", headers=auth)).json()["voices"] == []
        assert elevenlabs_standin.voice_list_calls == 3


class TestZeroTtl:
    @pytest.fixture
    def settings_overrides(self, elevenlabs_standin: ElevenLabsStandin) -> dict[str, Any]:
        return {**elevenlabs_standin.settings_overrides(), "elevenlabs_cache_ttl_seconds": 0}

    async def test_every_request_asks_elevenlabs(
        self, client: httpx.AsyncClient, auth: dict[str, str], elevenlabs_standin
    ):
        for _ in range(3):
            assert (await client.get("/voices", headers=auth)).status_code == 200
        assert elevenlabs_standin.voice_list_calls == 3


# --- the adapter on its own ----------------------------------------------------------------


async def test_a_hanging_elevenlabs_times_out_to_the_bundled_voices(
    elevenlabs_standin: ElevenLabsStandin, caplog: pytest.LogCaptureFixture
):
    catalogue = VoiceCatalogue(
        bundled_voices(),
        api_key=API_KEY,
        base_url=elevenlabs_standin.base_url,
        timeout_seconds=0.2,
    )
    elevenlabs_standin.hang_next(seconds=5)
    try:
        with caplog.at_level(logging.WARNING, logger="talkstack.voices"):
            assert await catalogue.list() == list(bundled_voices())
        [warning] = warnings_in(caplog)
        assert "timed out" in warning
        assert await catalogue.exists(ARIA["voice_id"])
    finally:
        await catalogue.aclose()


async def test_an_unreachable_elevenlabs_falls_back(caplog: pytest.LogCaptureFixture):
    catalogue = VoiceCatalogue(bundled_voices(), api_key=API_KEY, base_url="http://127.0.0.1:9")
    try:
        with caplog.at_level(logging.WARNING, logger="talkstack.voices"):
            assert await catalogue.get(ARIA["voice_id"]) is not None
        assert "request failed" in warnings_in(caplog)[0]
    finally:
        await catalogue.aclose()


async def test_without_a_key_nothing_is_fetched():
    catalogue = VoiceCatalogue(bundled_voices())
    assert not catalogue.live
    assert await catalogue.get("nope") is None
    assert len(await catalogue.list()) == len(bundled_voices())
    await catalogue.aclose()


def test_a_base_url_that_is_not_http_is_refused():
    with pytest.raises(ValueError, match="ELEVENLABS_API_BASE_URL"):
        VoiceCatalogue(bundled_voices(), api_key=API_KEY, base_url="ftp://example.com")
