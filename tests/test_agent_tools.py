"""The agent's abilities in a live call: custom webhook tools, the keypad, voicemail, success
criteria (transfers to a human: tests/test_agent_transfer.py).

Each test plays Twilio's part over the real relay WebSocket (tests/standins/twilio_relay.py),
with the LLM stand-in scripting the model's tool calls and a real HTTP server as the user's
tool endpoint. What is checked is what the callee hears (the relay's messages), what the LLM is
told (its requests), what the tool receives (signed), and what is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.integrations.webhooks.sender import verify_signature
from app.models import Call, Project
from tests.factories import (
    CALLEE,
    CallingAgent,
    call_row,
    calling_agent,
    db_update,
    dial,
    eventually,
    relay_settings,
)
from tests.standins.server import running
from tests.standins.tool_server import ToolServer
from tests.standins.twilio_relay import answer

FROM = "+14155550100"
TO = CALLEE


@pytest.fixture
def tools() -> Iterator[ToolServer]:
    with running(ToolServer()) as server:
        yield server


@pytest.fixture
def settings_overrides(request, twilio_standin, llm) -> dict[str, Any]:
    return relay_settings(twilio_standin, llm, **getattr(request, "param", {}))


def booking_tool(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "book_appointment",
        "description": "Book the appointment the callee agreed to.",
        "parameters": {
            "type": "object",
            "properties": {"day": {"type": "string"}},
            "required": ["day"],
        },
        "url": url,
        "timeoutSeconds": 2,
        **extra,
    }


async def agent_with(client, mailbox, twilio_standin, **fields: Any) -> CallingAgent:
    agent = {"systemInstruction": "You are Jack from the clinic.", **fields}
    return await calling_agent(client, mailbox, twilio_standin, number=FROM, agent=agent)


async def project_secret(app, setup: CallingAgent) -> str:
    """The secret tool requests are signed with (the create-agent response showed it once)."""
    async with app.state.ctx.sessionmaker() as s:
        project = await s.get(Project, uuid.UUID(setup.project))
        assert project is not None and project.webhook_secret
        return project.webhook_secret


# -- custom tools -------------------------------------------------------------------------------


async def test_a_tool_call_is_posted_signed_and_its_answer_reaches_the_llm(
    app, client, mailbox, live, twilio_standin, llm, tools
):
    setup = await agent_with(client, mailbox, twilio_standin, tools=[booking_tool(tools.url)])
    secret = await project_secret(app, setup)
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    tools.answer(b'{"booked": true, "confirmation": "F-17"}')
    llm.reply_tool_call("book_appointment", {"day": "Friday"})
    llm.reply_text("You are booked for Friday, confirmation F 17.")

    await relay.say("Friday works, please book it.")
    # Silence while the tool works would sound dead: a filler first.
    assert await relay.reply() == "One moment, please."
    assert await relay.reply() == "You are booked for Friday, confirmation F 17."

    [request] = tools.requests
    assert verify_signature(secret, request.headers["x-talkstack-signature"], request.body)
    sent = request.json()
    assert sent["tool"] == "book_appointment" and sent["arguments"] == {"day": "Friday"}
    assert sent["call"]["callSid"] == sid and sent["call"]["to"] == TO
    assert sent["id"].startswith("tlc_")
    first, second = llm.requests[0], llm.requests[1]
    assert "book_appointment" in first.tool_names and "press_digits" in first.tool_names
    assert "transfer_call" not in first.tool_names  # no transfer number
    called, answered = second.messages[-2], second.messages[-1]
    assert called["role"] == "assistant" and called["tool_calls"][0]["function"]["name"] == (
        "book_appointment"
    )
    assert answered == {
        "role": "tool",
        "tool_call_id": called["tool_calls"][0]["id"],
        "content": '{"booked": true, "confirmation": "F-17"}',
    }
    await relay.ws.close()
    # The whole transcript: it may be saved in more than one write.
    call = await eventually(app, sid, lambda c: len(c.transcript) == 4)
    kinds = [(t["role"], t.get("name") or t.get("text")) for t in call.transcript]
    assert kinds == [
        ("user", "Friday works, please book it."),
        ("agent", "One moment, please."),
        ("tool", "book_appointment"),
        ("agent", "You are booked for Friday, confirmation F 17."),
    ]
    assert call.transcript[2]["result"] == '{"booked": true, "confirmation": "F-17"}'


async def test_a_tool_that_does_not_answer_in_time_is_told_to_the_llm_and_the_call_goes_on(
    app, client, mailbox, live, twilio_standin, llm, tools
):
    tool = booking_tool(tools.url, timeoutSeconds=1, fillerMessage="Let me check the diary.")
    setup = await agent_with(client, mailbox, twilio_standin, tools=[tool])
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    tools.answer(b"{}", delay=3)
    llm.reply_tool_call("book_appointment", {"day": "Friday"})
    llm.reply_text("Sorry, the booking system is slow; I will call you back.")

    await relay.say("Book Friday.")
    assert await relay.reply() == "Let me check the diary."
    started = time.monotonic()
    assert await relay.reply(within=5) == "Sorry, the booking system is slow; I will call you back."
    assert time.monotonic() - started < 2.5  # the tool's 1 s, not the server's 3 s
    told = llm.requests[1].messages[-1]
    assert told["role"] == "tool" and "did not answer within 1 seconds" in told["content"]


async def test_the_callee_speaking_during_a_tool_call_cancels_it_and_the_history_stays_valid(
    app, client, mailbox, live, twilio_standin, llm, tools
):
    setup = await agent_with(client, mailbox, twilio_standin, tools=[booking_tool(tools.url)])
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    tools.answer(b"{}", delay=1.5)
    llm.reply_tool_call("book_appointment", {"day": "Friday"})
    llm.reply_text("No problem, Monday then?")

    await relay.say("Book Friday.")
    assert await relay.reply() == "One moment, please."
    await tools.wait_for(1)
    await relay.say("Actually, make it Monday.")
    assert await relay.reply() == "No problem, Monday then?"
    # The LLM stand-in refuses a history with an unanswered tool call, as OpenAI does.
    last = llm.requests[-1].messages
    assert [m["role"] for m in last[-3:]] == ["assistant", "tool", "user"]
    assert "outcome is unknown" in last[-2]["content"]


async def test_an_llm_failure_after_a_tool_answered_apologises_and_keeps_a_valid_history(
    app, client, mailbox, live, twilio_standin, llm, tools
):
    setup = await agent_with(client, mailbox, twilio_standin, tools=[booking_tool(tools.url)])
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    tools.answer(b'{"booked": true}')
    llm.reply_tool_call("book_appointment", {"day": "Friday"})
    llm.reply_error(500)  # the second round, with the tool's answer, fails

    await relay.say("Book Friday, please.")
    assert await relay.reply() == "One moment, please."
    apology = await relay.reply()
    assert "sorry" in apology.lower() and "goodbye" in apology.lower()
    end = await relay.ended()
    assert json.loads(end["handoffData"]) == {"reason": "llm-error"}
    # The request that failed was a valid one (the stand-in refuses an invalid history with a
    # 400, as OpenAI does): the tool call, then its answer.
    failed = llm.requests[1]
    assert failed.status == 500
    called, answered = failed.messages[-2], failed.messages[-1]
    assert called["tool_calls"][0]["function"]["name"] == "book_appointment"
    assert answered == {
        "role": "tool",
        "tool_call_id": called["tool_calls"][0]["id"],
        "content": '{"booked": true}',
    }
    assert len(tools.requests) == 1  # the booking is not made twice

    await relay.finish(handoff=end["handoffData"])
    cb = twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration="12")
    assert (await twilio_standin.deliver(client, cb)).status_code == 204
    # The session's end writes the reason and the final transcript together.
    call = await eventually(
        app, sid, lambda c: c.status == "completed" and c.ended_reason == "llm-error"
    )
    assert [(t["role"], t.get("name") or t["text"]) for t in call.transcript] == [
        ("user", "Book Friday, please."),
        ("agent", "One moment, please."),
        ("tool", "book_appointment"),
        ("agent", apology),
    ]
    assert call.transcript[2]["result"] == '{"booked": true}'
    assert call.transcript[-1]["error"] is True


@pytest.mark.parametrize(
    ("answer", "status", "told"),
    [
        (b'{"error": "no slots"}', 500, 'answered HTTP 500. It said: {"error": "no slots"}'),
        (b"x" * 20_000, 200, "answer was too large"),
        (b"", 204, "Done."),
    ],
)
async def test_a_tool_answer_becomes_what_the_llm_is_told(app, tools, answer, status, told):
    tools.answer(answer, status=status)
    result = await app.state.ctx.tool_webhooks.call(
        booking_tool(tools.url), {"day": "Friday"}, call={"callSid": "CA1"}, secret=None
    )
    assert told in result
    assert "x-talkstack-signature" not in tools.requests[0].headers  # no secret, no signature


@pytest.mark.parametrize("settings_overrides", [{"webhook_allow_private_hosts": False}],
                         indirect=True)  # fmt: skip
async def test_a_tool_whose_host_turned_private_is_not_called(app, tools):
    # Saved with a public address; by the call, its name resolves into our network (or was
    # changed behind the API's back): the guard at connect time refuses, nothing is sent.
    result = await app.state.ctx.tool_webhooks.call(
        booking_tool(tools.url), {}, call={}, secret="whsec_x"
    )
    assert result == "Error: the book_appointment tool could not be reached."
    assert tools.requests == []


# -- the keypad -----------------------------------------------------------------------------------


async def test_the_agent_presses_digits_to_get_through_a_menu(
    app, client, mailbox, live, twilio_standin, llm
):
    setup = await agent_with(client, mailbox, twilio_standin)
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_tool_call("press_digits", {"digits": "2w#"})
    llm.reply_tool_call("press_digits", {"digits": "call me"})
    llm.reply_text("Hello, is this the front desk?")

    await relay.say("For appointments, press 2, then pound.")
    assert await relay.next_message() == {"type": "sendDigits", "digits": "2w#"}
    assert await relay.reply() == "Hello, is this the front desk?"
    assert [m["content"] for m in llm.requests[1].messages[-1:]] == ["Pressed 2w#."]
    assert "only be 0-9" in llm.requests[2].messages[-1]["content"]  # nothing sent for it
    assert all(m["type"] != "sendDigits" or m["digits"] == "2w#" for m in relay.received)
    await relay.ws.close()
    call = await eventually(app, sid, lambda c: len(c.transcript) >= 4)
    assert [t["name"] for t in call.transcript if t["role"] == "tool"] == [
        "press_digits",
        "press_digits",
    ]


# -- voicemail -------------------------------------------------------------------------------------

MESSAGE = "Hi {{name}}, this is Jack from the clinic. Please call us back."


async def amd(client, twilio_standin, sid: str, answered_by: str) -> None:
    cb = twilio_standin.callback(sid, "amd", AnsweredBy=answered_by)
    assert (await twilio_standin.deliver(client, cb)).status_code == 204


async def test_a_voicemail_message_is_left_after_the_beep(
    app, client, mailbox, live, twilio_standin, llm
):
    setup = await agent_with(client, mailbox, twilio_standin, voicemailMessage=MESSAGE)
    sid = await dial(client, setup, name="John")
    # The machine's verdict waits for the end of its greeting: the message goes after the beep.
    assert twilio_standin.created_calls[-1]["MachineDetection"] == ["DetectMessageEnd"]
    relay = await answer(twilio_standin, client, live, sid)

    await amd(client, twilio_standin, sid, "machine_end_beep")
    deadline = time.monotonic() + 5
    while not twilio_standin.redirects(sid):
        assert time.monotonic() < deadline, "the message was never left"
        await asyncio.sleep(0.02)
    [document] = twilio_standin.redirects(sid)
    say = ET.fromstring(document).find("Say")  # noqa: S314 (the app's TwiML)
    assert (
        say is not None
        and say.text == "Hi John, this is Jack from the clinic. Please call us back."
    )
    assert ET.fromstring(document).find("Hangup") is not None  # noqa: S314
    # Twilio ends the relay session for the new TwiML; the message stays in the transcript.
    await relay.ws.close()
    await amd(client, twilio_standin, sid, "machine_end_beep")  # repeated: nothing more
    r = await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration="9")
    )
    assert r.status_code == 204
    call = await eventually(
        app,
        sid,
        # The job marks the call before asking Twilio and writes the message after: wait for it.
        lambda c: c.status == "voicemail" and any(t.get("voicemail") for t in c.transcript),
    )
    assert call.ended_reason == "voicemail"
    assert call.transcript[-1]["voicemail"] is True
    assert call.transcript[-1]["text"].startswith("Hi John,")
    assert len(twilio_standin.redirects(sid)) == 1


@pytest.mark.parametrize("answered_by", ["human", "machine_start", "fax"])
async def test_no_message_unless_a_machine_greeting_is_over(
    app, client, mailbox, twilio_standin, answered_by
):
    setup = await agent_with(client, mailbox, twilio_standin, voicemailMessage=MESSAGE)
    sid = await dial(client, setup, name="John")
    await amd(client, twilio_standin, sid, answered_by)
    await asyncio.sleep(0.3)
    assert twilio_standin.redirects(sid) == []
    assert (await call_row(app, sid)).ended_reason is None


async def test_an_agent_without_a_message_hangs_up_on_machines_as_before(
    app, client, mailbox, twilio_standin
):
    setup = await agent_with(client, mailbox, twilio_standin)
    sid = await dial(client, setup)
    assert twilio_standin.created_calls[-1]["MachineDetection"] == ["Enable"]
    await amd(client, twilio_standin, sid, "machine_end_beep")
    await asyncio.sleep(0.3)
    assert twilio_standin.redirects(sid) == []


async def test_a_message_needing_a_missing_variable_is_400_and_dials_nothing(
    app, client, mailbox, twilio_standin
):
    setup = await agent_with(client, mailbox, twilio_standin, voicemailMessage=MESSAGE)
    r = await client.post(
        "/call/makeCall",
        json={"number": TO, "projectId": setup.project, "agentId": setup.agent},
        headers=setup.key,
    )
    assert r.status_code == 400 and r.json()["code"] == "MISSING_VARIABLES"
    assert r.json()["missing"] == ["name"]
    assert twilio_standin.created_calls == []


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_a_call_over_before_the_message_is_not_changed(app, client, mailbox, twilio_standin):
    from app.conversation import voicemail
    from app.models import Job

    setup = await agent_with(client, mailbox, twilio_standin, voicemailMessage=MESSAGE)
    sid = await dial(client, setup, name="John")
    await amd(client, twilio_standin, sid, "machine_end_beep")
    twilio_standin.set_call(sid, status="completed")  # the machine hung up meanwhile
    async with app.state.ctx.sessionmaker() as s:
        job = (await s.execute(select(Job).where(Job.kind == voicemail.VOICEMAIL_JOB))).scalar_one()
    await voicemail.leave_message(app.state.ctx, job)  # Twilio refuses: nobody to hear it
    call = await call_row(app, sid)
    assert call.ended_reason is None and not any(t.get("voicemail") for t in call.transcript)


# -- success criteria ------------------------------------------------------------------------------


async def finished_conversation(app, client, setup: CallingAgent, twilio_standin) -> str:
    """A call that ended with a short conversation in its transcript."""
    sid = await dial(client, setup)
    transcript = [
        {"role": "agent", "text": "Shall I book Friday?", "interrupted": False},
        {"role": "user", "text": "Yes please, Friday at ten."},
    ]
    await db_update(app, Call, Call.call_sid == sid, transcript=transcript, status="completed")
    return sid


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_the_analysis_judges_success_against_the_agents_criteria(
    app, client, mailbox, twilio_standin, llm
):
    from app.call.analysis import run_analysis_job
    from app.jobs.queue import enqueue

    criteria = "The callee booked an appointment."
    setup = await agent_with(client, mailbox, twilio_standin, successCriteria=criteria)
    sid = await finished_conversation(app, client, setup, twilio_standin)
    llm.reply_json({"summary": "Booked Friday.", "sentiment": "positive", "successful": True,
                    "answers": {}})  # fmt: skip
    r = await client.post("/call/analysis", json={"sid": sid}, headers=setup.key)
    assert r.status_code == 200, r.text
    assert r.json()["analysis"] == {
        "summary": "Booked Friday.",
        "sentiment": "positive",
        "successful": True,
        "answers": [],
    }
    asked = llm.requests[-1]
    assert asked.json_schema is not None
    schema = asked.json_schema
    assert schema["properties"]["successful"]["type"] == "boolean"
    assert "successful" in schema["required"]
    assert criteria in asked.messages[-1]["content"]

    # The post-call analysis stores the verdict with the call (a non-boolean is refused).
    llm.reply_json({"summary": "Booked.", "sentiment": "neutral", "successful": "maybe",
                    "answers": {}})  # fmt: skip
    llm.reply_json({"summary": "Booked.", "sentiment": "neutral", "successful": False,
                    "answers": {}})  # fmt: skip
    async with app.state.ctx.sessionmaker() as s:
        call = (await s.execute(select(Call).where(Call.call_sid == sid))).scalar_one()
        job = await enqueue(s, kind="call.analyze", payload={"call_id": str(call.id)})
        await s.commit()
    with pytest.raises(Exception, match="success verdict"):
        await run_analysis_job(app.state.ctx, job)
    await run_analysis_job(app.state.ctx, job)
    assert (await call_row(app, sid)).data["successful"] is False
    r = await client.post("/call", json={"sid": sid}, headers=setup.key)
    assert r.json()["data"]["successful"] is False


async def test_without_criteria_the_analysis_has_no_verdict(
    app, client, mailbox, twilio_standin, llm
):
    setup = await agent_with(client, mailbox, twilio_standin)
    sid = await finished_conversation(app, client, setup, twilio_standin)
    llm.reply_json({"summary": "Booked.", "sentiment": "positive", "answers": {}})
    r = await client.post("/call/analysis", json={"sid": sid}, headers=setup.key)
    assert r.status_code == 200, r.text
    assert "successful" not in r.json()["analysis"]
    schema = llm.requests[-1].json_schema
    assert schema is not None and "successful" not in schema["properties"]


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_the_message_is_left_at_most_once(app, client, mailbox, twilio_standin):
    from app.conversation import voicemail
    from app.models import Job

    setup = await agent_with(client, mailbox, twilio_standin, voicemailMessage=MESSAGE)
    sid = await dial(client, setup, name="John")
    twilio_standin.set_call(sid, status="in-progress")
    await amd(client, twilio_standin, sid, "machine_end_beep")
    async with app.state.ctx.sessionmaker() as s:
        job = (await s.execute(select(Job).where(Job.kind == voicemail.VOICEMAIL_JOB))).scalar_one()
    # A job runs at least once: twice at the same time here.
    await asyncio.gather(
        voicemail.leave_message(app.state.ctx, job), voicemail.leave_message(app.state.ctx, job)
    )
    await amd(client, twilio_standin, sid, "machine_end_beep")  # a repeated verdict: no job
    assert len(twilio_standin.redirects(sid)) == 1
    call = await call_row(app, sid)
    assert call.ended_reason == "voicemail"
    assert [t["text"] for t in call.transcript if t.get("voicemail")] == [
        "Hi John, this is Jack from the clinic. Please call us back."
    ]
    async with app.state.ctx.sessionmaker() as s:
        jobs = (await s.execute(select(Job).where(Job.kind == voicemail.VOICEMAIL_JOB))).all()
    assert len(jobs) == 1


@pytest.mark.parametrize("settings_overrides", [{"twilio_timeout_seconds": 1.0}], indirect=True)
@pytest.mark.parametrize("fault", ["503", "timeout"])
async def test_the_message_is_left_once_twilio_is_reachable_again(
    app, client, mailbox, twilio_standin, fault
):
    setup = await agent_with(client, mailbox, twilio_standin, voicemailMessage=MESSAGE)
    sid = await dial(client, setup, name="John")
    twilio_standin.set_call(sid, status="in-progress")
    if fault == "503":
        twilio_standin.fail_next(1, status=503)
    else:
        twilio_standin.hang_next(1, seconds=5)  # longer than the app waits for Twilio
    await amd(client, twilio_standin, sid, "machine_end_beep")

    # The job's first try fails; it unmarks the call and tries again (2 s later), and then
    # the message is left, once.
    call = await eventually(
        app, sid, lambda c: any(t.get("voicemail") for t in c.transcript), within=15
    )
    assert call.ended_reason == "voicemail"
    await asyncio.sleep(0.5)  # anything more would come now
    sent = twilio_standin.redirects(sid)
    assert len(sent) == 2 and sent[0] == sent[1]  # refused (or unanswered), then left
    say = ET.fromstring(sent[1]).find("Say")  # noqa: S314 (the app's TwiML)
    assert (
        say is not None
        and say.text == "Hi John, this is Jack from the clinic. Please call us back."
    )
    call = await call_row(app, sid)
    assert [t["text"] for t in call.transcript if t.get("voicemail")] == [say.text]
