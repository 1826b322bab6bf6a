"""The agent talks: Twilio ConversationRelay over a real WebSocket, the LLM stand-in behind it.

Each test plays Twilio's part (signed TwiML fetch, the relay socket, callbacks) against the app
served by uvicorn, with the official `openai` client talking to the LLM stand-in.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import websockets
from sqlalchemy import event, select

from app.conversation import transcript
from app.integrations.webhooks.sender import verify_signature
from app.models import Call, CallAnalysis, Job
from tests.factories import (
    CallingAgent,
    api_key_for,
    call_row,
    calling_agent,
    db_update,
    dial,
    eventually,
    relay_settings,
    verified_account,
)
from tests.standins.receiver import WebhookReceiver
from tests.standins.twilio_relay import (
    RelayTwiml,
    answer,
    connect_relay,
    post_signed,
    relay_socket,
    ring,
)

FROM = "+14155550100"
CALLER = "+14155550199"
GREETING = "Hi John, this is Jack from the clinic."
QUESTIONS: list[dict[str, Any]] = [
    {"question": "Does the callee want an appointment?", "type": "Boolean"},
    {"question": "How many people are coming?", "type": "Number"},
    {"question": "Which day suits them?", "type": "Selector", "options": ["Monday", "Friday"]},
]


@pytest.fixture
def settings_overrides(request, twilio_standin, llm) -> dict[str, Any]:
    # A test changes more with @pytest.mark.parametrize("settings_overrides", [...], indirect=True).
    return relay_settings(
        twilio_standin,
        llm,
        webhook_retry_base_seconds=0.02,
        job_retry_base_seconds=0.01,
        **getattr(request, "param", {}),
    )


@pytest.fixture
async def setup(client, mailbox, twilio_standin, receiver) -> CallingAgent:
    agent = {
        "systemInstruction": "You are Jack from the clinic, calling {{name}}.",
        "firstMessage": "Hi {{name}}, this is Jack from the clinic.",
        "voice_id": "CwhRBWXzGAHq8TQ4Fs17",
        "language": "en-GB",
        "analysisQuestions": QUESTIONS,
    }
    return await calling_agent(
        client, mailbox, twilio_standin, number=FROM, webhook_url=receiver.url, agent=agent
    )


async def status(twilio_standin, client, sid: str, value: str, **fields: Any) -> None:
    r = await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "status", CallStatus=value, **fields)
    )
    assert r.status_code == 204, r.text


def events(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for d in receiver.deliveries:
        body = json.loads(d.body)
        seen.setdefault(body["id"], body)  # a retried delivery repeats its event id
    return list(seen.values())


# -- the TwiML ----------------------------------------------------------------------------------


async def test_twiml_hands_the_answered_call_to_conversation_relay(
    app, client, setup, twilio_standin
):
    sid = await dial(client, setup, name="John")
    call = await call_row(app, sid)

    r = await twilio_standin.deliver(client, twilio_standin.twiml_request(sid))

    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    twiml = RelayTwiml.parse(r.text)
    assert twiml.url == f"wss://talkstack.test/twilio/calls/{call.id}/relay"
    assert twiml.action == f"https://talkstack.test/twilio/calls/{call.id}/relay-ended"
    attrs = twiml.attributes
    assert attrs["ttsProvider"] == "ElevenLabs" and attrs["voice"] == "CwhRBWXzGAHq8TQ4Fs17"
    assert attrs["language"] == "en-GB"
    assert attrs["welcomeGreeting"] == GREETING
    assert attrs["interruptible"] == "any" and attrs["welcomeGreetingInterruptible"] == "any"
    assert attrs["dtmfDetection"] == "true"
    assert twiml.parameters == {
        "callId": str(call.id),
        "projectId": setup.project,
        "agentId": setup.agent,
        "direction": "outbound",
    }
    # Recorded since its creation (Record=true, see test_calls): no second recording.
    assert ET.fromstring(r.text).find("Start") is None  # noqa: S314 (our TwiML)


# -- a whole call ------------------------------------------------------------------------------


async def test_a_whole_call_from_dial_to_transcript_to_analysis_to_webhook(
    app, client, live, setup, twilio_standin, llm, receiver
):
    receiver.fail_first = 1  # the first delivery is answered 500 and retried
    sid = await dial(client, setup, name="John")
    await status(twilio_standin, client, sid, "initiated")
    await status(twilio_standin, client, sid, "ringing")
    relay = await answer(twilio_standin, client, live, sid)
    await status(twilio_standin, client, sid, "in-progress")

    # Tokens reach Twilio as the LLM produces them, not after the whole reply.
    llm.reply_text(["Of course", ", we have", " Friday", " open."], delay=0.3)
    await relay.say("Hello? Can I book an appointment for two?")
    started = time.monotonic()
    assert await relay.tokens(1) == ["Of course"]
    assert time.monotonic() - started < 0.6  # the other three tokens take 0.9 s more
    assert await relay.reply() == ", we have Friday open."
    [first] = await llm.wait_for_requests(1)
    assert first.stream and first.model == "gpt-4o-mini"
    # An outbound call may meet an automated menu: the agent can press keys.
    assert [t["function"]["name"] for t in first.tools] == ["end_call", "press_digits"]
    roles = [(m["role"], m["content"]) for m in first.messages]
    assert roles[0][0] == "system" and "calling John." in roles[0][1]
    assert roles[1:] == [
        ("assistant", GREETING),
        ("user", "Hello? Can I book an appointment for two?"),
    ]

    llm.reply_tool_call("end_call", {"reason": "booked"}, text="Great, see you Friday. Bye!")
    await relay.say("Friday works, thanks.")
    assert await relay.reply() == "Great, see you Friday. Bye!"
    end = await relay.ended()
    assert json.loads(end["handoffData"]) == {"reason": "agent-ended"}
    r = await relay.finish(handoff=end["handoffData"])
    assert r.status_code == 200 and "<Hangup" in r.text
    await status(twilio_standin, client, sid, "completed", CallDuration="31")

    # The transcript, the final facts and the analysis, as the user reads them.
    await eventually(app, sid, lambda c: c.data != {})
    r = await client.post("/call", json={"sid": sid}, headers=setup.key)
    body = r.json()
    assert body["status"] == "completed" and body["seconds"] == 31
    assert body["endedReason"] == "agent-ended"
    turns = [(t["role"], t["text"]) for t in body["transcript"]]
    assert turns == [
        ("agent", GREETING),
        ("user", "Hello? Can I book an appointment for two?"),
        ("agent", "Of course, we have Friday open."),
        ("user", "Friday works, thanks."),
        ("agent", "Great, see you Friday. Bye!"),
    ]
    assert all(t["startedAt"].endswith("Z") for t in body["transcript"])
    assert not any(t.get("interrupted") for t in body["transcript"])
    analysis = body["data"]
    assert set(analysis) == {"summary", "sentiment", "answers"}
    assert analysis["sentiment"] in ("positive", "neutral", "negative")
    answers = {a["question"]: (a["type"], a["answer"]) for a in analysis["answers"]}
    assert answers[QUESTIONS[0]["question"]][1] in ("Yes", "No")
    assert isinstance(answers[QUESTIONS[1]["question"]][1], int | float)
    assert answers[QUESTIONS[2]["question"]][1] in ("Monday", "Friday")
    # The analysis asked for structured output built from the agent's questions.
    asked = [r for r in llm.requests if r.structured]
    assert len(asked) == 1
    fmt = asked[0].response_format
    assert fmt is not None and fmt["json_schema"]["strict"] is True
    props = fmt["json_schema"]["schema"]["properties"]["answers"]["properties"]
    assert props["q1"]["enum"] == ["Yes", "No"] and props["q2"]["type"] == "number"
    assert props["q3"]["enum"] == ["Monday", "Friday"]
    assert "Friday works, thanks." in asked[0].messages[-1]["content"]

    # The project's webhook heard every change, in order, signed, the first one retried.
    await receiver.wait_for(6, within=10)
    seen = events(receiver)
    assert [(e["event"], e["call"]["status"]) for e in seen] == [
        ("call.status", "initiated"),
        ("call.status", "ringing"),
        ("call.status", "in-progress"),
        ("call.status", "completed"),
        ("call.analyzed", "completed"),
    ]
    assert seen[-1]["call"]["data"] == analysis
    assert len(receiver.deliveries) == 6  # five events, the first twice
    for delivery in receiver.deliveries:
        header = delivery.headers["x-talkstack-signature"]
        assert verify_signature(setup.webhook_secret, header, delivery.body)


# -- interruptions, keys, silence, limits, failures -----------------------------------------


async def test_an_interruption_cancels_the_completion_and_keeps_what_was_heard(
    app, client, live, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_text(["Our opening", " hours are", " nine to five", " on weekdays."], delay=0.4)
    await relay.say("When are you open?")
    assert await relay.tokens(2) == ["Our opening", " hours are"]

    await relay.interrupt("Our opening hours")
    await llm.wait_for_cancelled(1)  # the running completion was cancelled, not left to run
    llm.reply_text("Saturday we are closed.")
    await relay.say("And on Saturday?")
    assert await relay.reply() == "Saturday we are closed."

    second = llm.requests[-1]
    assert [(m["role"], m["content"]) for m in second.messages[-3:]] == [
        ("user", "When are you open?"),
        ("assistant", "Our opening hours"),
        ("user", "And on Saturday?"),
    ]
    await relay.ws.close()
    call = await eventually(app, sid, lambda c: len(c.transcript) == 5)
    cut = call.transcript[2]
    assert cut["role"] == "agent" and cut["interrupted"] is True
    assert cut["text"] == "Our opening hours"
    assert cut["generatedText"] == "Our opening hours are"
    assert call.transcript[4]["text"] == "Saturday we are closed."


async def test_an_interrupted_greeting_is_recorded_as_heard(
    app, client, live, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    await relay.interrupt("Hi John, this is")
    llm.reply_text("Yes, Jack from the clinic.")
    await relay.say("Who is this?")
    assert await relay.reply() == "Yes, Jack from the clinic."
    assert llm.requests[0].messages[1] == {"role": "assistant", "content": "Hi John, this is"}
    await relay.ws.close()
    call = await eventually(app, sid, lambda c: len(c.transcript) == 3)
    assert call.transcript[0]["text"] == "Hi John, this is"
    assert call.transcript[0]["interrupted"] is True
    assert call.transcript[0]["generatedText"] == GREETING


async def test_keypad_presses_reach_the_agent(app, client, live, setup, twilio_standin, llm):
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_text("You pressed one: booking.")
    await relay.press("1")
    assert await relay.reply() == "You pressed one: booking."
    assert llm.requests[0].messages[-1]["content"] == "(The callee pressed 1 on the keypad.)"
    await relay.ws.close()
    call = await eventually(app, sid, lambda c: len(c.transcript) == 3)
    assert call.transcript[1]["role"] == "user" and call.transcript[1]["dtmf"] == "1"


@pytest.mark.parametrize(
    "settings_overrides",
    [{"conversation_silence_seconds": 0.3, "conversation_reprompts": 2}],
    indirect=True,
)
async def test_a_silent_callee_is_reprompted_twice_then_the_call_ends_as_silence(
    app, client, live, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_text("Are you still there?")
    llm.reply_text("Hello, can you hear me?")
    assert await relay.reply(within=3) == "Are you still there?"
    assert await relay.reply(within=3) == "Hello, can you hear me?"
    end = await relay.ended(within=3)
    assert json.loads(end["handoffData"]) == {"reason": "silence"}
    for request in llm.requests:
        assert "still on the line" in request.messages[-1]["content"]
    await relay.finish()
    await status(twilio_standin, client, sid, "completed", CallDuration="20")
    call = await eventually(app, sid, lambda c: c.status == "silence")
    assert call.ended_reason == "silence"
    assert [t.get("reprompt") for t in call.transcript] == [None, True, True]


async def test_the_call_ends_at_the_agents_maximum_duration(
    app, client, live, setup, twilio_standin, llm
):
    from app.models import Agent

    await db_update(app, Agent, Agent.id == uuid.UUID(setup.agent), max_call_duration_seconds=1)
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    started = time.monotonic()
    end = await relay.ended(within=5)
    assert 0.8 < time.monotonic() - started < 3
    assert json.loads(end["handoffData"]) == {"reason": "max-duration"}
    await relay.finish()
    call = await eventually(app, sid, lambda c: c.ended_reason == "max-duration")
    assert call.transcript[0]["text"] == GREETING


async def test_an_llm_failure_mid_call_apologises_and_hangs_up_cleanly(
    app, client, live, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_error(500)
    await relay.say("Hello?")
    apology = await relay.reply()
    assert "sorry" in apology.lower() and "goodbye" in apology.lower()
    end = await relay.ended()
    assert json.loads(end["handoffData"]) == {"reason": "llm-error"}
    await relay.finish()
    await status(twilio_standin, client, sid, "completed", CallDuration="9")
    call = await eventually(app, sid, lambda c: c.status == "completed" and c.transcript)
    assert call.ended_reason == "llm-error"
    assert call.transcript[-1]["text"] == apology and call.transcript[-1]["error"] is True


async def test_a_stream_that_breaks_mid_reply_also_apologises(
    app, client, live, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_break(after=2)
    await relay.say("Hello?")
    end = await relay.ended()
    assert json.loads(end["handoffData"]) == {"reason": "llm-error"}
    spoken = [m for m in relay.received if m["type"] == "text"]
    assert spoken[-1]["last"] is True and "sorry" in spoken[-1]["token"].lower()


# -- who may open the socket -------------------------------------------------------------------


async def test_a_second_relay_session_continues_the_first_transcript(
    app, client, live, setup, twilio_standin, llm
):
    # Twilio opens the relay socket again for the same call (its TwiML fetched again, the
    # socket dropped and reconnected): what was said before stays, and the agent remembers it.
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_text("Nine to five.")
    await relay.say("When are you open?")
    assert await relay.reply() == "Nine to five."
    llm.reply_text("Booked.")
    await relay.press("1")
    assert await relay.reply() == "Booked."
    await relay.ws.close()
    await eventually(app, sid, lambda c: len(c.transcript) == 5)

    again = await answer(twilio_standin, client, live, sid)
    llm.reply_text("Closed on Saturday.")
    await again.say("And on Saturday?")
    assert await again.reply() == "Closed on Saturday."
    assert [(m["role"], m["content"]) for m in llm.requests[-1].messages[1:]] == [
        ("assistant", GREETING),
        ("user", "When are you open?"),
        ("assistant", "Nine to five."),
        ("user", "(The callee pressed 1 on the keypad.)"),
        ("assistant", "Booked."),
        ("assistant", GREETING),  # Twilio greets again as the new session starts
        ("user", "And on Saturday?"),
    ]
    await again.ws.close()
    call = await eventually(app, sid, lambda c: len(c.transcript) == 8)
    assert [(t["role"], t["text"]) for t in call.transcript] == [
        ("agent", GREETING),
        ("user", "When are you open?"),
        ("agent", "Nine to five."),
        ("user", ""),  # the key press (dtmf "1")
        ("agent", "Booked."),
        ("agent", GREETING),
        ("user", "And on Saturday?"),
        ("agent", "Closed on Saturday."),
    ]


async def test_an_unsigned_or_misdirected_socket_is_refused_with_403(
    app, client, live, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    call = await call_row(app, sid)
    url = f"wss://talkstack.test/twilio/calls/{call.id}/relay"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with relay_socket(twilio_standin, live, url, signed=False):
            pass
    assert refused.value.response.status_code == 403
    other = f"wss://talkstack.test/twilio/calls/{uuid.uuid4()}/relay"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with relay_socket(twilio_standin, live, other):  # signed, for another call id
            pass
    assert refused.value.response.status_code == 403
    assert llm.requests == []
    assert (await call_row(app, sid)).transcript == []


async def test_a_socket_for_a_finished_call_is_refused(app, client, live, setup, twilio_standin):
    sid = await dial(client, setup, name="John")
    call = await call_row(app, sid)
    await status(twilio_standin, client, sid, "completed", CallDuration="0")
    url = f"wss://talkstack.test/twilio/calls/{call.id}/relay"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with relay_socket(twilio_standin, live, url):
            pass
    assert refused.value.response.status_code == 403


async def test_the_relay_end_callback_needs_a_signature(client, setup, call_id=None):
    r = await client.post(
        f"/twilio/calls/{uuid.uuid4()}/relay-ended", data={"CallSid": "CA" + "0" * 32}
    )
    assert r.status_code == 403


# -- inbound calls ------------------------------------------------------------------------------


async def test_an_inbound_call_is_answered_by_the_numbers_agent(
    app, client, live, setup, twilio_standin, llm, receiver
):
    number = twilio_standin.incoming_number(setup.number_sid)
    assert number["voice_url"] == "https://talkstack.test/twilio/voice/inbound"
    sid, r = await ring(twilio_standin, client, FROM, CALLER)
    assert r.status_code == 200, r.text
    twiml = RelayTwiml.parse(r.text)
    call = await call_row(app, sid)
    assert call.direction == "inbound" and call.status == "ringing"
    assert (call.from_number, call.to_number) == (CALLER, FROM)
    assert str(call.agent_id) == setup.agent and str(call.project_id) == setup.project
    assert twiml.parameters["direction"] == "inbound"
    # Recorded from the moment the agent answers: Twilio posts the recording to our callback.
    recording = ET.fromstring(r.text).find("Start/Recording")  # noqa: S314 (our TwiML)
    assert recording is not None, r.text
    assert recording.attrib == {
        "recordingStatusCallback": f"https://talkstack.test/twilio/calls/{call.id}/recording",
        "recordingStatusCallbackMethod": "POST",
        "recordingStatusCallbackEvent": "completed",
    }
    # No {{name}} on an inbound call: the placeholder is left empty, never read out.
    assert call.first_message == "Hi , this is Jack from the clinic."

    # Twilio retries the webhook: still one call.
    _, again = await ring_again(twilio_standin, client, sid)
    assert again.status_code == 200
    relay = await connect_relay(twilio_standin, client, live, sid, twiml, direction="inbound")
    llm.reply_tool_call("end_call", text="Thanks for calling, goodbye.")
    await relay.say("Wrong number, sorry.")
    assert await relay.reply() == "Thanks for calling, goodbye."
    await relay.ended()
    await relay.finish()
    params = {
        "AccountSid": twilio_standin.account_sid,
        "CallSid": sid,
        "CallStatus": "completed",
        "CallDuration": "12",
        "From": CALLER,
        "To": FROM,
        "Direction": "inbound",
    }
    r = await post_signed(twilio_standin, client, number["status_callback"], params)
    assert r.status_code == 204
    call = await eventually(app, sid, lambda c: c.status == "completed" and c.data != {})
    assert call.seconds == 12 and call.ended_reason == "agent-ended"
    recording_url = f"https://api.twilio.com/2010-04-01/Accounts/{twilio_standin.account_sid}"
    recording_url += "/Recordings/RE0123456789abcdef0123456789abcdef"
    finished = {
        "AccountSid": twilio_standin.account_sid,
        "CallSid": sid,
        "RecordingSid": "RE0123456789abcdef0123456789abcdef",
        "RecordingUrl": recording_url,
        "RecordingStatus": "completed",
        "RecordingDuration": "12",
        "RecordingChannels": "1",
        "RecordingSource": "StartCallRecordingTwiML",
    }
    r = await post_signed(
        twilio_standin, client, recording.attrib["recordingStatusCallback"], finished
    )
    assert r.status_code == 204
    r = await client.post("/call", json={"sid": sid}, headers=setup.key)
    body = r.json()
    assert body["direction"] == "inbound" and body["phoneNumber"] == CALLER
    assert body["recordingUrls"] == [recording_url + ".mp3"]
    assert body["transcript"][-1]["text"] == "Thanks for calling, goodbye."
    async with app.state.ctx.sessionmaker() as s:
        assert len((await s.execute(select(Call))).scalars().all()) == 1
        # Checked at Twilio once it must have ended, in case its final callback is lost.
        checks = (await s.execute(select(Job).where(Job.kind == "call.check"))).scalars().all()
        assert [j.payload["call_id"] for j in checks] == [str(call.id)]


async def ring_again(twilio_standin, client, sid: str) -> tuple[str, Any]:
    record = twilio_standin.call(sid)
    params = {
        "AccountSid": twilio_standin.account_sid,
        "CallSid": sid,
        "From": record["from"],
        "To": record["to"],
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    url = "https://talkstack.test/twilio/voice/inbound"
    return sid, await post_signed(twilio_standin, client, url, params)


async def test_a_number_without_an_agent_says_sorry_and_hangs_up(app, client, twilio_standin):
    _, r = await ring(twilio_standin, client, "+14155550177", CALLER)
    assert r.status_code == 200
    assert "<Say" in r.text and "<Hangup" in r.text and "ConversationRelay" not in r.text
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.execute(select(Call))).scalars().all() == []


async def test_a_forged_inbound_request_is_403_and_creates_nothing(app, client, setup):
    r = await client.post(
        "/twilio/voice/inbound",
        data={"CallSid": "CA" + "1" * 32, "From": CALLER, "To": FROM},
        headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
    )
    assert r.status_code == 403
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.execute(select(Call))).scalars().all() == []


# -- POST /call/analysis --------------------------------------------------------------------------


async def finished_call(app, client, live, setup, twilio_standin, llm) -> str:
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_tool_call("end_call", text="Booked for Friday, bye.")
    await relay.say("Two of us, Friday please.")
    await relay.ended()
    await relay.finish()
    await status(twilio_standin, client, sid, "completed", CallDuration="20")
    await eventually(app, sid, lambda c: c.data != {})
    return sid


async def test_analysis_on_demand_answers_typed_and_is_cached(
    app, client, live, setup, twilio_standin, llm
):
    sid = await finished_call(app, client, live, setup, twilio_standin, llm)
    questions = [
        {"question": "Did they book?", "type": "Boolean"},
        {"question": "How many?", "type": "Number"},
        {"question": "Mood in a word?", "type": "Text"},
        {"question": "Which day?", "type": "Selector", "options": ["Monday", "Friday"]},
    ]
    llm.reply_json(
        {
            "summary": "They booked Friday for two.",
            "sentiment": "positive",
            "answers": {"q1": "Yes", "q2": 2, "q3": "Cheerful", "q4": "Friday"},
        }
    )
    before = len(llm.requests)
    r = await client.post(
        "/call/analysis", json={"callSid": sid, "questions": questions}, headers=setup.key
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "message": "successfully analysed the call.",
        "status": "success",
        "analysis": {
            "summary": "They booked Friday for two.",
            "sentiment": "positive",
            "answers": [
                {"question": "Did they book?", "type": "Boolean", "answer": "Yes"},
                {"question": "How many?", "type": "Number", "answer": 2},
                {"question": "Mood in a word?", "type": "Text", "answer": "Cheerful"},
                {"question": "Which day?", "type": "Selector", "answer": "Friday"},
            ],
        },
    }
    assert len(llm.requests) == before + 1
    again = await client.post(
        "/call/analysis", json={"sid": sid, "questions": questions}, headers=setup.key
    )
    assert again.json() == r.json()
    assert len(llm.requests) == before + 1  # answered from the cache
    # No questions: the agent's own, which the post-call analysis already answered.
    r = await client.post("/call/analysis", json={"sid": sid}, headers=setup.key)
    assert r.status_code == 200
    assert [a["question"] for a in r.json()["analysis"]["answers"]] == [
        q["question"] for q in QUESTIONS
    ]
    assert len(llm.requests) == before + 1


async def test_analysis_answers_that_do_not_fit_are_a_502_and_not_cached(
    app, client, live, setup, twilio_standin, llm
):
    sid = await finished_call(app, client, live, setup, twilio_standin, llm)
    questions = [{"question": "Which day?", "type": "Selector", "options": ["Monday", "Friday"]}]
    llm.reply_json({"summary": "s", "sentiment": "neutral", "answers": {"q1": "Sunday"}})
    r = await client.post(
        "/call/analysis", json={"sid": sid, "questions": questions}, headers=setup.key
    )
    assert r.status_code == 502 and r.json()["code"] == "LLM_UNAVAILABLE"
    llm.reply_error(500, count=3, retry_after=0.01)  # the client retries twice
    r = await client.post(
        "/call/analysis", json={"sid": sid, "questions": questions}, headers=setup.key
    )
    assert r.status_code == 502
    async with app.state.ctx.sessionmaker() as s:
        rows = (await s.execute(select(CallAnalysis))).scalars().all()
    assert len(rows) == 1  # only the post-call analysis of the agent's questions


async def test_analysis_of_a_call_in_progress_is_409_and_asks_nothing(
    client, setup, twilio_standin, llm
):
    sid = await dial(client, setup, name="John")
    r = await client.post("/call/analysis", json={"sid": sid}, headers=setup.key)
    assert r.status_code == 409 and r.json()["code"] == "CALL_IN_PROGRESS"
    await status(twilio_standin, client, sid, "no-answer")
    r = await client.post("/call/analysis", json={"sid": sid}, headers=setup.key)
    assert r.status_code == 409 and r.json()["code"] == "NO_TRANSCRIPT"
    assert llm.requests == []


async def test_analysis_of_another_users_call_is_404(
    app, client, live, setup, twilio_standin, llm, mailbox
):
    sid = await finished_call(app, client, live, setup, twilio_standin, llm)
    other = await verified_account(client, mailbox)
    headers = {"x-api-key": await api_key_for(client, other)}
    r = await client.post("/call/analysis", json={"sid": sid}, headers=headers)
    missing = await client.post("/call/analysis", json={"sid": "CA" + "f" * 32}, headers=headers)
    assert r.status_code == missing.status_code == 404
    assert r.json() == missing.json()


@pytest.mark.parametrize(
    "questions",
    [
        [{"question": "Which?", "type": "Selector"}],
        [{"question": "Which?", "type": "Selector", "options": ["only one"]}],
        [{"question": "Yes?", "type": "Boolean", "options": ["a", "b"]}],
        [{"question": "", "type": "Text"}],
        [{"question": "x", "type": "Date"}],
        [{"question": f"q{i}", "type": "Text"} for i in range(51)],
    ],
)
async def test_analysis_questions_are_validated(client, setup, questions):
    r = await client.post(
        "/call/analysis", json={"sid": "CA" + "0" * 32, "questions": questions},
        headers=setup.key,
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"


async def test_the_analysis_job_is_queued_once_per_finished_conversation(
    app, client, live, setup, twilio_standin, llm
):
    sid = await finished_call(app, client, live, setup, twilio_standin, llm)
    # The call's data is saved by the job, which is marked done in the transaction after:
    # wait for that too rather than read its status at once.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        async with app.state.ctx.sessionmaker() as s:
            query = select(Job).where(Job.kind == "call.analyze")
            jobs = (await s.execute(query)).scalars().all()
        if any(job.status == "running" for job in jobs) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
            continue
        break
    assert len(jobs) == 1 and jobs[0].status == "done"
    assert jobs[0].payload == {"call_id": str((await call_row(app, sid)).id)}


async def _analysis_jobs(app) -> list[Job]:
    async with app.state.ctx.sessionmaker() as s:
        return list((await s.scalars(select(Job).where(Job.kind == "call.analyze"))).all())


@pytest.mark.parametrize("final_status_first", [False, True], ids=["relay-first", "status-first"])
async def test_the_analysis_is_queued_by_the_second_of_the_conversations_end_and_the_final_status(
    app, client, live, setup, twilio_standin, llm, final_status_first
):
    # Whichever comes second queues the job, in its transaction: the job never runs before
    # the call's status is final, so it never waits (or retries) for it.
    sid = await dial(client, setup, name="John")
    relay = await answer(twilio_standin, client, live, sid)
    if final_status_first:
        # The callee hangs up: Twilio's final status can come before the socket's close.
        llm.reply_text("Friday it is.")
        await relay.say("Two of us, Friday please.")
        assert await relay.reply() == "Friday it is."
        await status(twilio_standin, client, sid, "completed", CallDuration="20")
        assert await _analysis_jobs(app) == []  # the conversation is not over yet
        assert (await call_row(app, sid)).analysis_state is None
        await relay.ws.close()
    else:
        llm.reply_tool_call("end_call", text="Booked for Friday, bye.")
        await relay.say("Two of us, Friday please.")
        await relay.ended()
        await relay.finish()
        assert await _analysis_jobs(app) == []  # the status is not final yet
        call = await call_row(app, sid)
        assert call.status not in ("completed", "silence") and call.analysis_state == "waiting"
        await status(twilio_standin, client, sid, "completed", CallDuration="20")
    call = await eventually(app, sid, lambda c: c.data != {}, within=3)
    jobs = await _analysis_jobs(app)
    assert len(jobs) == 1
    assert jobs[0].attempts == 1 and jobs[0].last_error is None  # ran once, no waiting
    assert call.analysis_state == "queued" and call.status == "completed"


# -- saving the transcript during the call -------------------------------------------------


async def test_the_transcript_is_saved_during_the_call_at_most_once_a_second(
    app, client, live, setup, twilio_standin, llm, monkeypatch
):
    monkeypatch.setattr(transcript, "SAVE_EVERY_SECONDS", 1.0)
    writes: list[float] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE calls SET transcript"):
            writes.append(time.monotonic())

    engine = app.state.ctx.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        sid = await dial(client, setup, name="John")
        relay = await answer(twilio_standin, client, live, sid)
        llm.reply_text("Turn 0.")
        await relay.say("Question 0?")
        assert await relay.reply() == "Turn 0."
        # The first change is written at once: a live call's transcript can be read.
        await eventually(app, sid, lambda c: len(c.transcript) == 3, within=0.5)
        assert len(writes) == 1

        # A quick callee: eight turns in well under a second go in one more write.
        started = time.monotonic()
        for n in range(1, 9):
            llm.reply_text(f"Turn {n}.")
            await relay.say(f"Question {n}?")
            assert await relay.reply() == f"Turn {n}."
        quick = time.monotonic() - started
        call = await eventually(app, sid, lambda c: len(c.transcript) == 19, within=2.0)
        assert call.transcript[-1]["text"] == "Turn 8."
        assert len(writes) <= 2 + int(quick), (quick, writes)
        assert all(b - a >= 0.99 for a, b in itertools.pairwise(writes)), writes

        # A turn right after a write waits for its interval; the end of the call does not.
        llm.reply_text("Goodbye.")
        await relay.say("Bye!")
        assert await relay.reply() == "Goodbye."
        ended = len(writes)
        await relay.ws.close()
        call = await eventually(app, sid, lambda c: len(c.transcript) == 21, within=0.5)
        await asyncio.sleep(1.2)
        # The end's own write, and none after it (a write still waiting was dropped).
        assert len(writes) == ended + 1
        final = await call_row(app, sid)
        assert [t.get("text") for t in final.transcript[-2:]] == ["Bye!", "Goodbye."]
    finally:
        event.remove(engine, "before_cursor_execute", count)
