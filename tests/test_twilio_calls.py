"""Twilio's Calls resource through the adapter (the real SDK) against the Twilio stand-in, and
the signed callbacks the stand-in makes as Twilio would."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from app.config import Settings
from app.integrations.twilio.adapter import TwilioAdapter, valid_twilio_signature
from app.integrations.twilio.errors import TwilioRejected, TwilioUnavailable
from app.integrations.twilio.types import CallFacts, PlacedCall
from tests.standins.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioStandin

AGENT_NUMBER = "+14155550100"
CALLEE = "+14155550123"
PUBLIC = "https://talkstack.test"
CALLBACKS = {
    "twiml_url": f"{PUBLIC}/twilio/voice?callId=7",
    "status_callback": f"{PUBLIC}/twilio/status?callId=7",
    "recording_status_callback": f"{PUBLIC}/twilio/recording?callId=7",
    "amd_callback": f"{PUBLIC}/twilio/amd?callId=7",
}
CALLS_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"


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


@pytest.fixture
def numbers(twilio_standin: TwilioStandin) -> str:
    return twilio_standin.add_incoming_number(AGENT_NUMBER)


async def place(adapter: TwilioAdapter, to: str = CALLEE, **overrides: Any) -> PlacedCall:
    values: dict[str, Any] = {
        "to": to,
        "from_": AGENT_NUMBER,
        "time_limit_seconds": 600,
        **CALLBACKS,
        **overrides,
    }
    return await adapter.create_call(**values)


# -- placing a call -----------------------------------------------------------------------------


async def test_create_call_sends_every_parameter_exactly(adapter, twilio_standin, numbers):
    placed = await place(adapter)

    assert re.fullmatch(r"CA[0-9a-f]{32}", placed.sid)
    assert placed.status == "queued"
    assert twilio_standin.created_calls == [
        {
            "To": [CALLEE],
            "From": [AGENT_NUMBER],
            "Url": [CALLBACKS["twiml_url"]],
            "Method": ["POST"],
            "StatusCallback": [CALLBACKS["status_callback"]],
            "StatusCallbackMethod": ["POST"],
            "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
            "Record": ["true"],
            "RecordingStatusCallback": [CALLBACKS["recording_status_callback"]],
            "RecordingStatusCallbackMethod": ["POST"],
            "RecordingStatusCallbackEvent": ["completed"],
            "MachineDetection": ["Enable"],
            "AsyncAmd": ["true"],
            "AsyncAmdStatusCallback": [CALLBACKS["amd_callback"]],
            "AsyncAmdStatusCallbackMethod": ["POST"],
            "TimeLimit": ["600"],
        }
    ]
    asked = twilio_standin.last_request
    assert (asked.method, asked.path) == ("POST", CALLS_PATH)
    assert asked.auth == (ACCOUNT_SID, AUTH_TOKEN)
    call = twilio_standin.call(placed.sid)
    assert (call["to"], call["from"], call["direction"]) == (CALLEE, AGENT_NUMBER, "outbound-api")
    assert call["phone_number_sid"] == numbers


async def test_a_verified_caller_id_may_place_calls(adapter, twilio_standin):
    twilio_standin.add_caller_id(AGENT_NUMBER)

    assert (await place(adapter)).status == "queued"


async def test_an_invalid_to_is_twilios_21211_as_a_400(adapter, twilio_standin, numbers):
    with pytest.raises(TwilioRejected) as raised:
        await place(adapter, to="+1555")

    err = raised.value
    assert err.status_code == 400
    assert err.body()["code"] == "TWILIO_REJECTED"
    assert err.body()["twilioCode"] == 21211
    assert "The 'To' number +1555 is not a valid phone number." in err.message


async def test_a_from_the_account_does_not_own_is_21210(adapter, twilio_standin):
    twilio_standin.add_incoming_number("+14155550111")

    with pytest.raises(TwilioRejected) as raised:
        await place(adapter)

    assert raised.value.body()["twilioCode"] == 21210
    assert f"{AGENT_NUMBER}, is not yet verified for your account" in raised.value.message


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (21214, "'To' phone number cannot be reached"),
        (21215, f"Account not authorized to call {CALLEE}"),
        (21216, f"Account not allowed to call {CALLEE}"),
        (21217, "Phone number does not appear to be valid"),
        (13224, "Twilio does not support calling this number"),
    ],
)
async def test_a_number_twilio_refuses_to_dial_is_a_400(
    adapter, twilio_standin, numbers, code, text
):
    twilio_standin.make_undialable(CALLEE, code=code)

    with pytest.raises(TwilioRejected) as raised:
        await place(adapter)

    assert raised.value.status_code == 400
    assert raised.value.body()["twilioCode"] == code
    assert text in raised.value.message
    # Another number still dials.
    assert (await place(adapter, to="+14155550124")).status == "queued"


async def test_a_custom_refusal_message_is_passed_on(adapter, twilio_standin, numbers):
    twilio_standin.make_undialable(CALLEE, code=21215, message="No calls to {to} today")

    with pytest.raises(TwilioRejected, match=rf"No calls to \{CALLEE} today"):
        await place(adapter)


@pytest.mark.parametrize("status", [500, 503])
async def test_a_twilio_5xx_on_create_is_a_502(adapter, twilio_standin, numbers, status):
    twilio_standin.fail_next(status=status)

    with pytest.raises(TwilioUnavailable) as raised:
        await place(adapter)

    assert raised.value.status_code == 502
    assert raised.value.message.startswith(f"Twilio failed to answer ({status} ")


async def test_a_hanging_create_is_a_502_after_the_timeout(twilio_standin, numbers):
    slow = TwilioAdapter.from_settings(twilio_settings(twilio_standin, twilio_timeout_seconds=0.3))
    assert slow is not None
    twilio_standin.hang_next(seconds=10)
    started = time.monotonic()
    try:
        with pytest.raises(TwilioUnavailable) as raised:
            await place(slow)
    finally:
        await slow.aclose()

    assert time.monotonic() - started < 3
    assert raised.value.message == "Twilio did not answer in time (0.3 s); try again later."


async def test_wrong_credentials_on_create_are_a_502(twilio_standin, numbers):
    bad = TwilioAdapter.from_settings(
        twilio_settings(twilio_standin, twilio_auth_token="wrong-" + "0" * 26)
    )
    assert bad is not None
    try:
        with pytest.raises(TwilioUnavailable, match=r"rejected the credentials \(401"):
            await place(bad)
    finally:
        await bad.aclose()


async def test_the_standin_requires_a_url_like_twilio(twilio_standin, numbers):
    async with httpx.AsyncClient(
        base_url=twilio_standin.base_url, auth=(ACCOUNT_SID, AUTH_TOKEN)
    ) as client:
        r = await client.post(CALLS_PATH, data={"To": CALLEE, "From": AGENT_NUMBER})
        bad_callback = await client.post(
            CALLS_PATH,
            data={"To": CALLEE, "From": AGENT_NUMBER, "Url": PUBLIC, "StatusCallback": "nope"},
        )
    assert r.status_code == 400
    assert r.json()["code"] == 21205
    assert bad_callback.json()["code"] == 21205
    assert twilio_standin.call_sids == []


# -- what Twilio knows about a call ---------------------------------------------------------------


async def test_fetch_call_maps_twilios_negative_price_to_a_positive_decimal(
    adapter, twilio_standin, numbers
):
    placed = await place(adapter)
    start = datetime(2025, 3, 4, 10, 0, 0, tzinfo=UTC)
    twilio_standin.set_call(
        placed.sid,
        status="completed",
        duration=42,
        price="-0.01300",
        answered_by="human",
        start_time=start,
        end_time=start + timedelta(seconds=42),
        date_created=start - timedelta(seconds=5),
    )

    facts = await adapter.fetch_call(placed.sid)

    assert facts == CallFacts(
        sid=placed.sid,
        status="completed",
        duration_seconds=42,
        price=Decimal("0.01300"),
        price_unit="USD",
        answered_by="human",
        start_time=start,
        end_time=start + timedelta(seconds=42),
        to=CALLEE,
        from_=AGENT_NUMBER,
        date_created=start - timedelta(seconds=5),
    )
    assert twilio_standin.last_request.path == CALLS_PATH.replace(".json", f"/{placed.sid}.json")


async def test_an_unpriced_unanswered_call_has_no_price_duration_or_times(
    adapter, twilio_standin, numbers
):
    placed = await place(adapter)

    facts = await adapter.fetch_call(placed.sid)

    assert (facts.status, facts.price, facts.duration_seconds) == ("queued", None, None)
    assert (facts.start_time, facts.end_time, facts.answered_by) == (None, None, None)
    assert facts.price_unit == "USD"


async def test_an_unknown_call_sid_is_a_502(adapter):
    with pytest.raises(TwilioUnavailable) as raised:
        await adapter.fetch_call("CA" + "0" * 32)

    assert raised.value.body()["twilioCode"] == 20404


# -- listing calls ---------------------------------------------------------------------------------


def seed_calls(
    standin: TwilioStandin, count: int, *, start: datetime, to: str = CALLEE
) -> list[str]:
    """`count` calls a minute apart from `start`, oldest first."""
    return [
        standin.add_call(
            to, AGENT_NUMBER, status="completed", start_time=start + timedelta(minutes=i)
        )
        for i in range(count)
    ]


async def test_list_calls_filters_by_to_from_and_start_time(adapter, twilio_standin):
    start = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
    early, later = seed_calls(twilio_standin, 2, start=start)
    other = twilio_standin.add_call("+14155550199", AGENT_NUMBER, start_time=start)
    twilio_standin.add_call(CALLEE, "+14155550111", start_time=start)
    twilio_standin.add_call(CALLEE, AGENT_NUMBER, status="queued")  # not started yet

    to_callee = await adapter.list_calls(to=CALLEE, from_=AGENT_NUMBER)
    after = await adapter.list_calls(to=CALLEE, started_after=start + timedelta(seconds=30))
    from_agent = await adapter.list_calls(from_=AGENT_NUMBER, started_after=start)

    assert [c.sid for c in to_callee][1:] == [later, early]  # newest first
    assert [c.sid for c in after] == [later]
    assert {c.sid for c in from_agent} == {early, later, other}
    asked = twilio_standin.requests_to("/Calls.json", "GET")[1]
    assert asked.query["To"] == [CALLEE]
    assert asked.query["StartTime>"] == ["2025-03-04T10:00:30Z"]


async def test_list_calls_sends_start_time_in_utc(adapter, twilio_standin):
    paris = timezone(timedelta(hours=1))

    await adapter.list_calls(started_after=datetime(2025, 3, 4, 11, 0, tzinfo=paris))
    await adapter.list_calls(started_after=datetime(2025, 3, 4, 10, 0))  # naive: UTC

    asked = twilio_standin.requests_to("/Calls.json", "GET")
    assert [r.query["StartTime>"] for r in asked] == [["2025-03-04T10:00:00Z"]] * 2


async def test_list_calls_follows_pages_up_to_the_limit(adapter, twilio_standin):
    twilio_standin.max_page_size = 2
    sids = seed_calls(twilio_standin, 5, start=datetime(2025, 3, 4, 10, 0, tzinfo=UTC))

    everything = await adapter.list_calls(to=CALLEE)
    first_three = await adapter.list_calls(to=CALLEE, limit=3)

    assert [c.sid for c in everything] == sids[::-1]
    assert [c.sid for c in first_three] == sids[::-1][:3]
    pages = [r.query.get("Page") for r in twilio_standin.requests_to("/Calls.json", "GET")]
    assert pages == [None, ["1"], ["2"], None, ["1"]]
    assert all(r.query["To"] == [CALLEE] for r in twilio_standin.requests_to("/Calls.json", "GET"))


async def test_a_5xx_while_listing_is_a_502(adapter, twilio_standin):
    twilio_standin.fail_next(status=500)

    with pytest.raises(TwilioUnavailable):
        await adapter.list_calls(to=CALLEE)


# -- hanging up ------------------------------------------------------------------------------------


async def test_end_call_completes_an_answered_call(adapter, twilio_standin, numbers):
    placed = await place(adapter)
    twilio_standin.twiml_request(placed.sid)  # Twilio fetches TwiML: the call is answered

    await adapter.end_call(placed.sid)

    asked = twilio_standin.last_request
    assert asked.path == CALLS_PATH.replace(".json", f"/{placed.sid}.json")
    assert asked.form == {"Status": ["completed"]}
    call = twilio_standin.call(placed.sid)
    assert call["status"] == "completed"
    assert call["end_time"] is not None and call["duration"] is not None


async def test_end_call_cancels_a_call_not_answered_yet(adapter, twilio_standin, numbers):
    placed = await place(adapter)

    await adapter.end_call(placed.sid)

    assert (await adapter.fetch_call(placed.sid)).status == "canceled"
    # Ending it again changes nothing and is not an error.
    await adapter.end_call(placed.sid)
    assert twilio_standin.call(placed.sid)["status"] == "canceled"


async def test_end_call_on_an_unknown_call_is_a_502(adapter):
    with pytest.raises(TwilioUnavailable):
        await adapter.end_call("CA" + "0" * 32)


# -- Twilio's callbacks ----------------------------------------------------------------------------


def signed_by_twilio(cb: Any) -> bool:
    return valid_twilio_signature(AUTH_TOKEN, cb.url, cb.params, cb.headers["X-Twilio-Signature"])


async def test_status_callbacks_carry_twilios_fields_and_a_valid_signature(
    adapter, twilio_standin, numbers
):
    placed = await place(adapter)

    ringing = twilio_standin.callback(placed.sid, "status", CallStatus="ringing")
    done = twilio_standin.callback(placed.sid, "status", CallStatus="completed", CallDuration=75)

    assert ringing.url == CALLBACKS["status_callback"]
    assert signed_by_twilio(ringing) and signed_by_twilio(done)
    assert ringing.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert {k: ringing.params[k] for k in ringing.params if k != "Timestamp"} == {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": placed.sid,
        "CallStatus": "ringing",
        "Called": CALLEE,
        "Caller": AGENT_NUMBER,
        "Direction": "outbound-api",
        "From": AGENT_NUMBER,
        "To": CALLEE,
        "CallbackSource": "call-progress-events",
        "SequenceNumber": "0",
    }
    assert re.fullmatch(
        r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000", done.params["Timestamp"]
    )
    assert done.params["SequenceNumber"] == "1"
    assert (done.params["CallDuration"], done.params["Duration"]) == ("75", "2")
    assert done.params["SipResponseCode"] == "200"
    # The call resource agrees with what the callbacks said, and a late one changes nothing.
    late = twilio_standin.callback(placed.sid, "status", CallStatus="ringing")
    assert late.params["SequenceNumber"] == "2" and "SipResponseCode" not in late.params
    facts = await adapter.fetch_call(placed.sid)
    assert (facts.status, facts.duration_seconds) == ("completed", 75)
    assert facts.start_time is not None and facts.end_time is not None


async def test_a_tampered_callback_fails_the_signature(twilio_standin, numbers, adapter):
    placed = await place(adapter)
    cb = twilio_standin.callback(placed.sid, "status", CallStatus="completed")

    tampered = {**cb.params, "CallStatus": "busy"}
    signature = cb.headers["X-Twilio-Signature"]
    assert not valid_twilio_signature(AUTH_TOKEN, cb.url, tampered, signature)
    assert not valid_twilio_signature(AUTH_TOKEN, cb.url + "&x=1", cb.params, signature)
    assert not valid_twilio_signature("another-token", cb.url, cb.params, signature)


async def test_fields_override_or_drop_params_and_stay_signed(adapter, twilio_standin, numbers):
    placed = await place(adapter)

    cb = twilio_standin.callback(
        placed.sid, "status", CallStatus="busy", SequenceNumber=9, SipResponseCode=None
    )

    assert cb.params["SequenceNumber"] == "9"
    assert "SipResponseCode" not in cb.params
    assert signed_by_twilio(cb)


async def test_recording_and_amd_callbacks(adapter, twilio_standin, numbers):
    placed = await place(adapter)
    twilio_standin.callback(placed.sid, "status", CallStatus="completed", CallDuration=30)

    recording = twilio_standin.callback(placed.sid, "recording")
    amd = twilio_standin.callback(placed.sid, "amd", AnsweredBy="machine_end_beep")

    assert recording.url == CALLBACKS["recording_status_callback"]
    rec_sid = recording.params["RecordingSid"]
    assert re.fullmatch(r"RE[0-9a-f]{32}", rec_sid)
    assert recording.params["RecordingUrl"] == (
        f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{rec_sid}"
    )
    assert {
        k: recording.params[k]
        for k in ("RecordingStatus", "RecordingDuration", "RecordingChannels", "RecordingSource")
    } == {
        "RecordingStatus": "completed",
        "RecordingDuration": "30",
        "RecordingChannels": "1",
        "RecordingSource": "OutboundAPI",
    }
    assert recording.params["CallSid"] == placed.sid and "RecordingStartTime" in recording.params
    assert amd.url == CALLBACKS["amd_callback"]
    assert amd.params["AnsweredBy"] == "machine_end_beep"
    assert amd.params["MachineDetectionDuration"].isdigit()
    assert signed_by_twilio(recording) and signed_by_twilio(amd)
    assert (await adapter.fetch_call(placed.sid)).answered_by == "machine_end_beep"
    with pytest.raises(ValueError, match="AnsweredBy"):
        twilio_standin.callback(placed.sid, "amd", AnsweredBy="machine")


async def test_twiml_request_is_the_signed_post_to_the_calls_url(adapter, twilio_standin, numbers):
    placed = await place(adapter)

    cb = twilio_standin.twiml_request(placed.sid)

    assert cb.url == CALLBACKS["twiml_url"]
    assert cb.path == "/twilio/voice?callId=7"
    assert {k: cb.params[k] for k in ("CallSid", "CallStatus", "From", "To", "Direction")} == {
        "CallSid": placed.sid,
        "CallStatus": "in-progress",
        "From": AGENT_NUMBER,
        "To": CALLEE,
        "Direction": "outbound-api",
    }
    assert cb.params["AccountSid"] == ACCOUNT_SID and cb.params["ApiVersion"] == "2010-04-01"
    assert signed_by_twilio(cb)
    assert (await adapter.fetch_call(placed.sid)).status == "in-progress"


async def test_deliver_posts_the_callback_in_process_and_the_app_can_verify_it(
    adapter, twilio_standin, numbers
):
    seen: list[dict[str, str]] = []
    app = FastAPI()

    @app.post("/twilio/status")
    async def status(request: Request) -> Response:
        form = await request.form()
        # As the app will: the public URL, not the in-process host.
        url = f"{PUBLIC}{request.url.path}?{request.url.query}"
        signature = request.headers.get("X-Twilio-Signature", "")
        if not valid_twilio_signature(AUTH_TOKEN, url, form, signature):
            return Response(status_code=403)
        seen.append({k: str(v) for k, v in form.items()})
        return Response(status_code=204)

    placed = await place(adapter)
    cb = twilio_standin.callback(placed.sid, "status", CallStatus="initiated")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        ok = await twilio_standin.deliver(client, cb)
        forged = await twilio_standin.deliver(
            client,
            type(cb)(
                url=cb.url, params={**cb.params, "CallStatus": "completed"}, headers=cb.headers
            ),
        )

    assert (ok.status_code, forged.status_code) == (204, 403)
    assert seen == [cb.params]


async def test_a_call_made_without_a_callback_url_has_no_callback(twilio_standin):
    sid = twilio_standin.add_call(CALLEE, AGENT_NUMBER)

    with pytest.raises(ValueError, match="StatusCallback"):
        twilio_standin.callback(sid, "status")
