"""The Twilio adapter: the real SDK, through our httpx client, against the Twilio stand-in."""

from __future__ import annotations

import gc
import logging
import socket
import time
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from app.config import Settings
from app.errors import install_error_handlers
from app.integrations.twilio.adapter import (
    HttpxTwilioClient,
    OwnedNumber,
    TwilioAdapter,
    valid_twilio_signature,
)
from app.integrations.twilio.errors import (
    TelephonyNotConfigured,
    TwilioRejected,
    TwilioUnavailable,
)
from app.integrations.twilio.port import NoTelephony, build_telephony
from app.main import create_app
from tests.standins.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioStandin

NUMBER = "+14155550100"
LONGER = "+141555501001"  # contains NUMBER: Twilio's partial PhoneNumber filter lists it too
VOICE_URL = "https://talkstack.test/twilio/voice"
STATUS_URL = "https://talkstack.test/twilio/voice/status"


def twilio_settings(standin: TwilioStandin, **overrides: Any) -> Settings:
    values: dict[str, Any] = {**standin.settings_overrides(), "twilio_timeout_seconds": 2.0}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def adapter(twilio_standin: TwilioStandin) -> AsyncIterator[TwilioAdapter]:
    built = TwilioAdapter.from_settings(twilio_settings(twilio_standin))
    assert built is not None
    try:
        yield built
    finally:
        await built.aclose()


def list_paths(standin: TwilioStandin) -> list[str]:
    return [r.path.rsplit("/", 1)[-1] for r in standin.requests]


# -- finding a number the account owns ---------------------------------------------------------


async def test_exact_number_is_found_among_partial_matches(adapter, twilio_standin):
    twilio_standin.add_incoming_number(LONGER)
    sid = twilio_standin.add_incoming_number(NUMBER)

    assert await adapter.find_owned_number(NUMBER) == OwnedNumber(NUMBER, "incoming", sid)
    (asked,) = twilio_standin.requests
    assert asked.method == "GET"
    assert asked.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json"
    assert asked.query["PhoneNumber"] == [NUMBER]


async def test_a_partial_match_alone_is_not_ownership(adapter, twilio_standin):
    twilio_standin.add_incoming_number(LONGER)

    assert await adapter.find_owned_number(NUMBER) is None


async def test_the_standin_filters_partially_like_twilio(twilio_standin):
    twilio_standin.add_incoming_number(LONGER)
    twilio_standin.add_incoming_number("+14155550199")
    async with httpx.AsyncClient(
        base_url=twilio_standin.base_url, auth=(ACCOUNT_SID, AUTH_TOKEN)
    ) as client:
        r = await client.get(
            f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json",
            params={"PhoneNumber": NUMBER},
        )
        wildcard = await client.get(
            f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json",
            params={"PhoneNumber": "+1415555019*"},
        )
    assert r.status_code == 200
    body = r.json()
    assert [n["phone_number"] for n in body["incoming_phone_numbers"]] == [LONGER]
    assert body["page"] == 0 and body["next_page_uri"] is None
    assert body["uri"].startswith(f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers.json?")
    assert [n["phone_number"] for n in wildcard.json()["incoming_phone_numbers"]] == [
        "+14155550199"
    ]


async def test_a_verified_caller_id_is_the_fallback(adapter, twilio_standin):
    twilio_standin.add_incoming_number(LONGER)
    sid = twilio_standin.add_caller_id(NUMBER)

    assert await adapter.find_owned_number(NUMBER) == OwnedNumber(NUMBER, "caller_id", sid)
    assert list_paths(twilio_standin) == ["IncomingPhoneNumbers.json", "OutgoingCallerIds.json"]
    assert twilio_standin.last_request.query["PhoneNumber"] == [NUMBER]


async def test_an_incoming_number_wins_over_a_caller_id(adapter, twilio_standin):
    twilio_standin.add_caller_id(NUMBER)
    sid = twilio_standin.add_incoming_number(NUMBER, voice=False)

    found = await adapter.find_owned_number(NUMBER)

    assert found == OwnedNumber(NUMBER, "incoming", sid, voice_capable=False)
    assert list_paths(twilio_standin) == ["IncomingPhoneNumbers.json"]


async def test_an_unknown_number_is_none(adapter, twilio_standin):
    twilio_standin.add_incoming_number("+14155550111")
    twilio_standin.add_caller_id("+14155550122")

    assert await adapter.find_owned_number(NUMBER) is None
    assert list_paths(twilio_standin) == ["IncomingPhoneNumbers.json", "OutgoingCallerIds.json"]


async def test_the_number_is_found_on_a_later_page(adapter, twilio_standin):
    twilio_standin.page_size = 1
    twilio_standin.add_incoming_number(LONGER)
    twilio_standin.add_incoming_number("+141555501002")
    sid = twilio_standin.add_incoming_number(NUMBER)

    assert await adapter.find_owned_number(NUMBER) == OwnedNumber(NUMBER, "incoming", sid)
    pages = [r.query.get("Page") for r in twilio_standin.requests]
    assert pages == [None, ["1"], ["2"]]
    assert all(r.query["PhoneNumber"] == [NUMBER] for r in twilio_standin.requests)


# -- pointing a number at this server ----------------------------------------------------------


async def test_point_voice_url_updates_the_number(adapter, twilio_standin):
    sid = twilio_standin.add_incoming_number(NUMBER, voice_url="https://old.example/voice")

    await adapter.point_voice_url(sid, VOICE_URL, status_callback=STATUS_URL)

    number = twilio_standin.incoming_number(sid)
    assert (number["voice_url"], number["voice_method"]) == (VOICE_URL, "POST")
    assert (number["status_callback"], number["status_callback_method"]) == (STATUS_URL, "POST")
    asked = twilio_standin.last_request
    assert asked.method == "POST"
    assert asked.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers/{sid}.json"
    assert asked.form == {
        "VoiceUrl": [VOICE_URL],
        "VoiceMethod": ["POST"],
        "StatusCallback": [STATUS_URL],
        "StatusCallbackMethod": ["POST"],
    }
    assert asked.headers["content-type"].startswith("application/x-www-form-urlencoded")


async def test_requests_carry_basic_auth_and_the_sdk_user_agent(adapter, twilio_standin):
    await adapter.find_owned_number(NUMBER)

    for asked in twilio_standin.requests:
        assert asked.auth == (ACCOUNT_SID, AUTH_TOKEN)
        assert asked.headers["authorization"].startswith("Basic ")
        assert asked.headers["user-agent"].startswith("twilio-python/")


async def test_a_rejected_voice_url_keeps_twilios_code_and_changes_nothing(adapter, twilio_standin):
    sid = twilio_standin.add_incoming_number(NUMBER, voice_url="https://old.example/voice")

    with pytest.raises(TwilioRejected) as raised:
        await adapter.point_voice_url(sid, "not-a-url", status_callback=STATUS_URL)

    err = raised.value
    assert err.status_code == 400
    assert err.body()["code"] == "TWILIO_REJECTED"
    assert err.body()["twilioCode"] == 21502
    assert "VoiceUrl is not valid" in err.message
    assert twilio_standin.incoming_number(sid)["voice_url"] == "https://old.example/voice"


async def test_an_unknown_number_sid_is_a_502(adapter, twilio_standin):
    with pytest.raises(TwilioUnavailable) as raised:
        await adapter.point_voice_url("PN" + "0" * 32, VOICE_URL, status_callback=STATUS_URL)

    assert raised.value.status_code == 502
    assert "404" in raised.value.message
    assert raised.value.body()["twilioCode"] == 20404


# -- failures become 502 with a clear message --------------------------------------------------


async def test_a_wrong_token_is_a_502_naming_the_settings(twilio_standin, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-" + "9" * 20
    bad = TwilioAdapter.from_settings(twilio_settings(twilio_standin, twilio_auth_token=wrong))
    assert bad is not None
    try:
        with pytest.raises(TwilioUnavailable) as raised:
            await bad.find_owned_number(NUMBER)
    finally:
        await bad.aclose()

    err = raised.value
    assert err.status_code == 502
    assert err.body()["code"] == "TWILIO_ERROR"
    assert err.message.startswith("Twilio rejected the credentials (401")
    assert "TWILIO_AUTH_TOKEN" in err.message
    assert err.body()["twilioCode"] == 20003
    assert twilio_standin.last_request.auth == (ACCOUNT_SID, wrong)
    assert list_paths(twilio_standin) == ["IncomingPhoneNumbers.json"]  # no caller-id fallback
    assert wrong not in err.message
    assert wrong not in caplog.text
    assert AUTH_TOKEN not in caplog.text


@pytest.mark.parametrize("status", [500, 503])
async def test_a_twilio_5xx_on_a_list_is_a_502(adapter, twilio_standin, status):
    twilio_standin.add_incoming_number(NUMBER)
    twilio_standin.fail_next(status=status)

    with pytest.raises(TwilioUnavailable) as raised:
        await adapter.find_owned_number(NUMBER)

    assert raised.value.status_code == 502
    assert raised.value.message.startswith(f"Twilio failed to answer ({status} ")
    # The fault was one request: the next attempt works.
    assert (await adapter.find_owned_number(NUMBER)) is not None


async def test_a_twilio_5xx_on_an_update_is_a_502_and_changes_nothing(adapter, twilio_standin):
    sid = twilio_standin.add_incoming_number(NUMBER, voice_url="https://old.example/voice")
    twilio_standin.fail_next(status=500)

    with pytest.raises(TwilioUnavailable) as raised:
        await adapter.point_voice_url(sid, VOICE_URL, status_callback=STATUS_URL)

    assert "Twilio failed to answer (500" in raised.value.message
    assert twilio_standin.incoming_number(sid)["voice_url"] == "https://old.example/voice"


async def test_rate_limiting_is_a_502(adapter, twilio_standin):
    twilio_standin.fail_next(status=429)

    with pytest.raises(TwilioUnavailable) as raised:
        await adapter.find_owned_number(NUMBER)

    assert "rate limiting" in raised.value.message


async def test_a_hanging_twilio_is_a_502_after_the_timeout(twilio_standin):
    slow = TwilioAdapter.from_settings(twilio_settings(twilio_standin, twilio_timeout_seconds=0.3))
    assert slow is not None
    twilio_standin.hang_next(seconds=10)
    started = time.monotonic()
    try:
        with pytest.raises(TwilioUnavailable) as raised:
            await slow.find_owned_number(NUMBER)
    finally:
        await slow.aclose()

    assert time.monotonic() - started < 3
    assert raised.value.status_code == 502
    assert raised.value.message == "Twilio did not answer in time (0.3 s); try again later."


async def test_an_unreachable_twilio_is_a_502(twilio_standin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    gone = build_telephony(
        twilio_settings(twilio_standin, twilio_api_base_url=f"http://127.0.0.1:{closed_port}")
    )
    assert gone is not None
    try:
        with pytest.raises(TwilioUnavailable) as raised:
            await gone.find_owned_number(NUMBER)
    finally:
        await gone.aclose()

    assert raised.value.message == "Twilio could not be reached (ConnectError); try again later."


async def test_a_base_url_that_is_not_twilio_is_a_502(twilio_standin):
    async def not_twilio(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    adapter = TwilioAdapter(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        api_base_url="http://carrier.invalid",
        transport=httpx.MockTransport(not_twilio),
    )
    try:
        with pytest.raises(TwilioUnavailable) as raised:
            await adapter.find_owned_number(NUMBER)
    finally:
        await adapter.aclose()
    assert "TWILIO_API_BASE_URL" in raised.value.message


# -- TWILIO_API_BASE_URL -----------------------------------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """Every URL that actually went on the wire."""

    def __init__(self) -> None:
        self.urls: list[httpx.URL] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_every_request_goes_to_the_base_url_never_to_twilio(twilio_standin):
    twilio_standin.page_size = 1
    twilio_standin.add_incoming_number(LONGER)
    sid = twilio_standin.add_incoming_number(NUMBER)
    wire = RecordingTransport()
    adapter = TwilioAdapter(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        api_base_url=twilio_standin.base_url + "/",
        transport=wire,
    )
    try:
        await adapter.find_owned_number(NUMBER)  # two pages: next_page_uri is rewritten too
        await adapter.find_owned_number("+14155550999")
        await adapter.point_voice_url(sid, VOICE_URL, status_callback=STATUS_URL)
    finally:
        await adapter.aclose()

    assert len(wire.urls) == 5 == len(twilio_standin.requests)
    assert {(u.scheme, u.host, u.port) for u in wire.urls} == {
        ("http", "127.0.0.1", twilio_standin.port)
    }


async def test_rewrite_keeps_path_and_query_and_refuses_other_twilio_domains():
    client = HttpxTwilioClient(base_url="https://carrier.example/compat/")
    default = HttpxTwilioClient()
    try:
        url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Calls.json?Page=1&PageSize=2"
        assert client.rewrite_url(url) == (
            "https://carrier.example/compat/2010-04-01/Accounts/AC1/Calls.json?Page=1&PageSize=2"
        )
        edge = "https://api.dublin.ie1.twilio.com/2010-04-01/Accounts.json"
        assert client.rewrite_url(edge) == "https://carrier.example/compat/2010-04-01/Accounts.json"
        with pytest.raises(TwilioUnavailable, match=r"lookups\.twilio\.com"):
            client.rewrite_url("https://lookups.twilio.com/v2/PhoneNumbers/+14155550100")
        # With Twilio itself configured, the SDK's URLs go out as the SDK built them.
        assert default.rewrite_url(url) == url
        lookups = "https://lookups.twilio.com/v2/PhoneNumbers/+14155550100"
        assert default.rewrite_url(lookups) == lookups
    finally:
        await client.close()
        await default.close()


def test_a_base_url_must_be_http():
    with pytest.raises(ValueError, match="TWILIO_API_BASE_URL"):
        HttpxTwilioClient(base_url="api.twilio.com")


async def test_list_form_values_are_repeated_keys(twilio_standin):
    seen: list[httpx.Request] = []

    async def capture(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={})

    client = HttpxTwilioClient(
        base_url="http://carrier.invalid", transport=httpx.MockTransport(capture)
    )
    try:
        await client.request(
            "POST",
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Calls.json",
            data={"To": "+1", "StatusCallbackEvent": ["initiated", "completed"], "Record": True},
            auth=("AC1", "tok"),
        )
    finally:
        await client.close()
    assert seen[0].content == (
        b"To=%2B1&StatusCallbackEvent=initiated&StatusCallbackEvent=completed&Record=true"
    )


# -- configuration ------------------------------------------------------------------------------


def test_no_credentials_builds_the_not_configured_stand_in():
    assert isinstance(build_telephony(Settings(_env_file=None)), NoTelephony)
    half = Settings(_env_file=None, twilio_account_sid=ACCOUNT_SID)
    assert isinstance(build_telephony(half), NoTelephony)


async def test_the_stand_in_refuses_everything_with_one_503_naming_the_variables():
    """Services never ask whether Twilio is configured: the stand-in's every method raises
    TelephonyNotConfigured, which the API answers 503."""
    telephony = NoTelephony()
    calls = [
        telephony.find_owned_number(NUMBER),
        telephony.point_voice_url("PN1", VOICE_URL, STATUS_URL),
        telephony.clear_voice_url("PN1"),
        telephony.fetch_call("CA1"),
        telephony.list_calls(),
        telephony.call_with_twiml(to=NUMBER, from_=NUMBER, twiml="<Response/>", status_callback=""),
        telephony.redirect_call("CA1", "<Response/>"),
        telephony.end_call("CA1"),
    ]
    for pending in calls:
        with pytest.raises(TelephonyNotConfigured):
            await pending
    with pytest.raises(TelephonyNotConfigured):
        telephony.valid_signature(VOICE_URL, {}, "sig")
    with pytest.raises(TelephonyNotConfigured):
        telephony.ensure_configured()
    await telephony.aclose()  # nothing to close

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/needs-twilio")
    async def needs_twilio() -> dict[str, str]:
        await telephony.end_call("CA1")
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.get("/needs-twilio")
    assert r.status_code == 503
    assert r.json() == {
        "message": "Telephony is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.",
        "status": "error",
        "code": "TWILIO_NOT_CONFIGURED",
    }


async def test_the_lifespan_builds_the_adapter_and_closes_it(settings, twilio_standin):
    twilio_standin.add_incoming_number(NUMBER)
    app = create_app(settings.model_copy(update=twilio_standin.settings_overrides()))
    async with app.router.lifespan_context(app):
        telephony = app.state.ctx.telephony
        assert isinstance(telephony, TwilioAdapter)
        assert await telephony.find_owned_number(NUMBER) is not None
    assert telephony.closed


async def test_the_lifespan_without_credentials_has_the_stand_in(app):
    assert isinstance(app.state.ctx.telephony, NoTelephony)


async def test_the_adapter_leaves_nothing_unclosed(twilio_standin, caplog):
    twilio_standin.add_incoming_number(NUMBER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = TwilioAdapter.from_settings(twilio_settings(twilio_standin))
        assert adapter is not None
        await adapter.find_owned_number(NUMBER)
        await adapter.aclose()
        assert adapter.closed
        del adapter
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert "Unclosed" not in caplog.text


# -- webhook signatures -------------------------------------------------------------------------


def test_a_signature_computed_by_twilio_is_valid_and_a_tampered_one_is_not():
    url = "https://talkstack.test/twilio/status?callId=42"
    params = {"CallSid": "CA" + "1" * 32, "CallStatus": "completed", "CallDuration": "12"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, params)

    assert valid_twilio_signature(AUTH_TOKEN, url, params, signature)
    assert not valid_twilio_signature(AUTH_TOKEN, url, {**params, "CallStatus": "busy"}, signature)
    tampered = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert not valid_twilio_signature(AUTH_TOKEN, url, params, tampered)
    assert not valid_twilio_signature("another-token", url, params, signature)
    assert not valid_twilio_signature(AUTH_TOKEN, url.replace("https", "http"), params, signature)
    assert not valid_twilio_signature(AUTH_TOKEN, url, params, "")
    assert not valid_twilio_signature(AUTH_TOKEN, url, params, None)


def test_a_signature_covers_repeated_form_fields():
    url = "https://talkstack.test/twilio/amd"
    form = FormData([("Event", "initiated"), ("Event", "ringing"), ("CallSid", "CA1")])
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url, form)

    assert valid_twilio_signature(AUTH_TOKEN, url, form, signature)
    fewer = FormData([("Event", "initiated"), ("CallSid", "CA1")])
    assert not valid_twilio_signature(AUTH_TOKEN, url, fewer, signature)
