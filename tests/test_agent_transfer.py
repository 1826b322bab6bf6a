"""Transfer to a human in a live call: cold (dialed through) and warm (the human briefed first).

Each test plays Twilio's part over the real relay WebSocket (tests/standins/twilio_relay.py) and
the Twilio REST stand-in, with the LLM stand-in scripting the model's `transfer_call`. What is
checked is what the callee hears, the TwiML Twilio gets, the calls and redirects Twilio is
asked for, what is stored and what the project's webhook hears.
"""

from __future__ import annotations

import asyncio
import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.conversation.transfer import check_leg
from app.jobs.worker import RetryLater
from app.models import Job
from tests.factories import CallingAgent, call_row, calling_agent, dial, eventually, relay_settings
from tests.standins.receiver import WebhookReceiver
from tests.standins.twilio_relay import (
    RelaySession,
    RelayTwiml,
    answer,
    connect_relay,
    post_signed,
    ring,
)

FROM = "+14155550100"
HUMAN = "+14155550177"
CALLER = "+14155550199"  # who calls our number FROM, inbound


@pytest.fixture
def settings_overrides(request, twilio_standin, llm) -> dict[str, Any]:
    return relay_settings(twilio_standin, llm, **getattr(request, "param", {}))


async def agent_with(client, mailbox, twilio_standin, **fields: Any) -> CallingAgent:
    agent = {"systemInstruction": "You are Jack from the clinic.", **fields}
    return await calling_agent(client, mailbox, twilio_standin, number=FROM, agent=agent)


async def inbound_call(client, live, twilio_standin) -> tuple[str, RelaySession]:
    """CALLER calls our number FROM; its agent answers."""
    sid, r = await ring(twilio_standin, client, FROM, CALLER)
    assert r.status_code == 200, r.text
    twiml = RelayTwiml.parse(r.text)
    return sid, await connect_relay(twilio_standin, client, live, sid, twiml, direction="inbound")


# -- cold ---------------------------------------------------------------------------------------


async def test_a_cold_transfer_ends_the_relay_and_dials_the_human(
    app, client, mailbox, live, twilio_standin, llm, receiver
):
    setup = await calling_agent(
        client,
        mailbox,
        twilio_standin,
        number=FROM,
        webhook_url=receiver.url,
        agent={"systemInstruction": "You are Jack.", "transferNumber": HUMAN},
    )
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_tool_call(
        "transfer_call",
        {"reason": "wants a person", "summary": "John wants to move his Friday appointment."},
        text="Let me put you through to a colleague.",
    )

    await relay.say("Can I talk to a person?")
    assert await relay.reply() == "Let me put you through to a colleague."
    end = await relay.ended()
    handoff = json.loads(end["handoffData"])
    assert handoff["reason"] == "transferred"
    assert handoff["transfer"]["to"] == HUMAN and handoff["transfer"]["mode"] == "cold"
    assert "transfer_call" in llm.requests[0].tool_names

    r = await relay.finish(handoff=end["handoffData"])
    assert r.status_code == 200
    dial_el = ET.fromstring(r.text).find("Dial")  # noqa: S314 (the app's TwiML)
    assert dial_el is not None and dial_el.text == HUMAN
    assert dial_el.attrib["callerId"] == FROM and dial_el.attrib["answerOnBridge"] == "true"
    call = await eventually(app, sid, lambda c: c.ended_reason == "transferred")
    # When the dialed call ends, Twilio asks this server what next.
    assert (dial_el.attrib["action"], dial_el.attrib["method"], dial_el.attrib["timeout"]) == (
        f"https://talkstack.test/twilio/calls/{call.id}/transfer-dialed",
        "POST",
        "30",
    )
    assert call.transferred_to == HUMAN
    r = await client.post("/call", json={"sid": sid}, headers=setup.key)
    assert r.json()["transferredTo"] == HUMAN and r.json()["endedReason"] == "transferred"
    assert call.transcript[-1]["role"] == "tool" and call.transcript[-1]["name"] == "transfer_call"
    # The project's webhook hears of it, with the call as it now is.
    deadline = time.monotonic() + 10
    while not any(json.loads(d.body)["event"] == "call.transferred" for d in receiver.deliveries):
        assert time.monotonic() < deadline, [
            json.loads(d.body)["event"] for d in receiver.deliveries
        ]
        await asyncio.sleep(0.02)
    [event] = [
        json.loads(d.body)
        for d in receiver.deliveries
        if json.loads(d.body)["event"] == "call.transferred"
    ]
    assert event["call"]["transferredTo"] == HUMAN and event["call"]["callSid"] == sid


@dataclass
class ColdCall:
    """A call whose agent has transferred it cold: Twilio is dialing the human."""

    setup: CallingAgent
    sid: str
    dial: ET.Element  # the <Dial>


async def transferring_agent(
    client, mailbox, twilio_standin, *, webhook_url: str | None, **fields: Any
) -> CallingAgent:
    """An agent (on FROM) that may transfer to HUMAN; its project's webhook at `webhook_url`."""
    agent = {"systemInstruction": "You are Jack from the clinic.", "transferNumber": HUMAN}
    return await calling_agent(
        client,
        mailbox,
        twilio_standin,
        number=FROM,
        webhook_url=webhook_url,
        agent={**agent, **fields},
    )


async def cold_transfer(
    app, client, mailbox, live, twilio_standin, llm, *, webhook_url: str | None = None
) -> ColdCall:
    setup = await transferring_agent(client, mailbox, twilio_standin, webhook_url=webhook_url)
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_tool_call(
        "transfer_call", {"reason": "wants a person"}, text="Let me put you through."
    )
    await relay.say("Can I talk to a person about my bill?")
    assert await relay.reply() == "Let me put you through."
    r = await relay.finish(handoff=(await relay.ended())["handoffData"])
    dial_el = ET.fromstring(r.text).find("Dial")  # noqa: S314 (the app's TwiML)
    assert dial_el is not None
    await eventually(app, sid, lambda c: len(c.transcript) == 3)  # the session saved
    return ColdCall(setup, sid, dial_el)


async def dial_ends(
    twilio_standin,
    client,
    cold: ColdCall,
    dial_status: str,
    *,
    callee: str = "in-progress",
    dial_sid: str | None = None,
    seconds: int = 0,
) -> httpx.Response:
    """Twilio's request to the <Dial>'s action once the dialed call is over (signed, with the
    parameters Twilio sends: the callee's call and the dialed one)."""
    params = {
        "AccountSid": twilio_standin.account_sid,
        "CallSid": cold.sid,
        "CallStatus": callee,
        "Direction": "outbound-api",
        "DialCallStatus": dial_status,
        "DialBridged": "true" if dial_status == "completed" else "false",
    }
    if dial_sid is not None:
        params |= {"DialCallSid": dial_sid, "DialCallDuration": str(seconds)}
    r = await post_signed(twilio_standin, client, cold.dial.attrib["action"], params)
    assert r.status_code == 200, r.text
    return r


async def test_a_cold_transfer_the_human_took_records_their_call_and_its_price(
    app, client, mailbox, live, twilio_standin, llm
):
    cold = await cold_transfer(app, client, mailbox, live, twilio_standin, llm)
    # The dialed call, a child of the callee's, billed on its own.
    human_sid = twilio_standin.add_call(HUMAN, FROM, direction="outbound-dial")
    twilio_standin.set_call(human_sid, status="completed", duration="95", price="-0.01400")

    r = await dial_ends(twilio_standin, client, cold, "completed", dial_sid=human_sid, seconds=95)

    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314 (the app's TwiML)
    call = await eventually(app, cold.sid, lambda c: c.transfer_cost is not None)
    assert (call.transfer_call_sid, call.transfer_status, call.transfer_seconds) == (
        human_sid,
        "completed",
        95,
    )
    assert call.transfer_joined_at is not None
    r = await client.post("/call", json={"sid": cold.sid}, headers=cold.setup.key)
    body = r.json()
    assert (body["endedReason"], body["transferStatus"], body["transferCost"]) == (
        "transferred",
        "completed",
        0.014,
    )
    assert body["cost"] is None  # the callee's own call is priced on its own
    assert twilio_standin.redirects(cold.sid) == []


@pytest.mark.parametrize("dial_status", ["no-answer", "busy", "failed"])
async def test_a_cold_transfer_nobody_answers_takes_the_callee_back_to_the_agent(
    app, client, mailbox, live, twilio_standin, llm, receiver, dial_status
):
    cold = await cold_transfer(
        app, client, mailbox, live, twilio_standin, llm, webhook_url=receiver.url
    )
    human_sid = twilio_standin.add_call(HUMAN, FROM, direction="outbound-dial")

    r = await dial_ends(twilio_standin, client, cold, dial_status, dial_sid=human_sid)

    # Before this answer, Twilio went on to nothing: the callee was hung up on, unheard.
    resumed = RelayTwiml.parse(r.text)
    call = await call_row(app, cold.sid)
    assert resumed.url == f"wss://talkstack.test/twilio/calls/{call.id}/relay"
    assert "welcomeGreeting" not in resumed.attributes
    assert (call.ended_reason, call.transfer_status, call.transfer_call_sid) == (
        None,
        dial_status,
        human_sid,
    )
    assert call.transcript[-1]["transferFailed"] == dial_status
    assert twilio_standin.redirects(cold.sid) == []  # the answer itself takes the callee back

    # The agent speaks first, told why, and cannot transfer again.
    sorry = "I'm sorry, nobody could pick up. Can I help you myself?"
    llm.reply_text(sorry)
    back = await connect_relay(twilio_standin, client, live, cold.sid, resumed)
    assert await back.reply() == sorry
    asked = llm.requests[-1]
    assert "transfer_call" not in asked.tool_names
    why = {"no-answer": "nobody answered", "busy": "the line was busy"}.get(
        dial_status, "the call could not be connected"
    )
    assert f"The transfer failed: {why}." in asked.messages[-1]["content"]
    events = await events_of(receiver, "call.transfer_failed")
    [event] = [e for e in events if e["event"] == "call.transfer_failed"]
    assert event["call"]["transferStatus"] == dial_status

    # Twilio asking again (our answer lost on the way) gets the same answer, and nothing more.
    again = await dial_ends(twilio_standin, client, cold, dial_status, dial_sid=human_sid)
    assert RelayTwiml.parse(again.text).url == resumed.url
    turns = (await call_row(app, cold.sid)).transcript
    assert [t.get("transferFailed") for t in turns if "transferFailed" in t] == [dial_status]


async def test_a_cold_transfer_whose_callee_hung_up_while_it_rang_ends_transfer_failed(
    app, client, mailbox, live, twilio_standin, llm
):
    cold = await cold_transfer(app, client, mailbox, live, twilio_standin, llm)
    r = await dial_ends(twilio_standin, client, cold, "canceled", callee="completed")

    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314 (the app's TwiML)
    call = await call_row(app, cold.sid)
    assert (call.ended_reason, call.transfer_status, call.transfer_call_sid) == (
        "transfer-failed",
        "canceled",
        None,
    )


async def test_the_end_of_another_calls_dial_changes_nothing(
    app, client, mailbox, live, twilio_standin, llm
):
    cold = await cold_transfer(app, client, mailbox, live, twilio_standin, llm)
    other = ColdCall(cold.setup, "CA" + "9" * 32, cold.dial)  # signed, to this call's URL
    r = await dial_ends(twilio_standin, client, other, "no-answer")
    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314 (the app's TwiML)
    call = await call_row(app, cold.sid)
    assert (call.ended_reason, call.transfer_status, len(call.transcript)) == (
        "transferred",
        None,
        3,
    )


async def test_a_cold_transfer_of_an_inbound_call_shows_our_number(
    app, client, mailbox, live, twilio_standin, llm
):
    await agent_with(client, mailbox, twilio_standin, transferNumber=HUMAN)
    sid, relay = await inbound_call(client, live, twilio_standin)
    llm.reply_tool_call("transfer_call", {"reason": "wants a person"}, text="Putting you through.")
    await relay.say("A person, please.")
    assert await relay.reply() == "Putting you through."
    end = await relay.ended()
    r = await relay.finish(handoff=end["handoffData"])
    dial_el = ET.fromstring(r.text).find("Dial")  # noqa: S314 (the app's TwiML)
    assert dial_el is not None and dial_el.text == HUMAN
    # The caller id is our number, the one the caller dialed (the call's `to`), never theirs.
    call = await call_row(app, sid)
    assert (call.direction, call.from_number, call.to_number) == ("inbound", CALLER, FROM)
    assert dial_el.attrib["callerId"] == FROM


async def test_a_handoff_to_another_number_is_never_dialed(
    app, client, mailbox, live, twilio_standin, llm
):
    setup = await agent_with(client, mailbox, twilio_standin, transferNumber=HUMAN)
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    forged = json.dumps({"reason": "transferred", "transfer": {"to": "+19005550100"}})
    r = await relay.finish(handoff=forged)
    assert ET.fromstring(r.text).find("Dial") is None  # noqa: S314 (the app's TwiML)
    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314 (the app's TwiML)
    assert (await call_row(app, sid)).transferred_to is None


async def test_an_agent_without_a_transfer_number_is_not_offered_the_tool(
    app, client, mailbox, live, twilio_standin, llm
):
    setup = await agent_with(client, mailbox, twilio_standin)
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    # A model that calls it anyway gets nowhere: no number, no transfer.
    llm.reply_tool_call("transfer_call", {"reason": "x"})
    llm.reply_text("How else can I help?")
    await relay.say("Put me through.")
    assert await relay.reply() == "How else can I help?"
    assert llm.requests[0].tool_names == ["end_call", "press_digits"]
    assert "no tool called transfer_call" in llm.requests[1].messages[-1]["content"]


# -- warm ---------------------------------------------------------------------------------------


@dataclass
class WarmCall:
    """A call whose agent has just asked for a warm transfer (the relay sent its `end`)."""

    setup: CallingAgent
    sid: str
    relay: RelaySession
    handoff: str  # the end message's handoffData, which Twilio posts back


async def warm_transfer_to_handoff(
    app, client, mailbox, live, twilio_standin, llm, *, webhook_url: str | None = None
) -> WarmCall:
    setup = await transferring_agent(
        client, mailbox, twilio_standin, webhook_url=webhook_url, transferMode="warm"
    )
    sid = await dial(client, setup)
    relay = await answer(twilio_standin, client, live, sid)
    llm.reply_tool_call(
        "transfer_call",
        {"reason": "billing", "summary": "John disputes his last invoice."},
        text="One moment, I'll get a colleague.",
    )
    await relay.say("I want to talk about my bill with a person.")
    assert await relay.reply() == "One moment, I'll get a colleague."
    end = await relay.ended()
    return WarmCall(setup, sid, relay, end["handoffData"])


async def on_hold(app, client, mailbox, live, twilio_standin, llm) -> tuple[WarmCall, str]:
    """A warm transfer under way: the callee on hold (the session's end saved), the human's
    call placed; its Call SID."""
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await warm.relay.finish(handoff=warm.handoff)
    await eventually(app, warm.sid, lambda c: len(c.transcript) == 3)
    return warm, str(twilio_standin.call_sids[-1])


async def leg_status(twilio_standin, client, human_sid: str, status: str, **fields: Any) -> None:
    """Twilio reports the progress of the human's call (to its own status callback)."""
    cb = twilio_standin.callback(human_sid, "status", CallStatus=status, **fields)
    assert (await twilio_standin.deliver(client, cb)).status_code == 204


async def call_object(client, warm: WarmCall) -> dict[str, Any]:
    r = await client.post("/call", json={"sid": warm.sid}, headers=warm.setup.key)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_warm_transfer_briefs_the_human_then_joins_them_in_a_conference(
    app, client, mailbox, live, twilio_standin, llm
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    r = await warm.relay.finish(handoff=warm.handoff)
    call = await call_row(app, warm.sid)
    room = f"talkstack-{call.id}"
    # The callee waits in the conference, which starts when the human joins.
    conf = ET.fromstring(r.text).find("Dial/Conference")  # noqa: S314 (the app's TwiML)
    assert conf is not None and conf.text == room
    assert conf.attrib["startConferenceOnEnter"] == "false"
    assert conf.attrib["endConferenceOnExit"] == "true"
    # The human is called, hears the briefing, then joins.
    human = twilio_standin.created_calls[-1]
    assert human["To"] == [HUMAN] and human["From"] == [FROM]
    assert human["StatusCallback"] == [
        f"https://talkstack.test/twilio/calls/{call.id}/transfer-status"
    ]
    leg = ET.fromstring(human["Twiml"][0])  # noqa: S314
    say = leg.find("Say")
    assert say is not None and "John disputes his last invoice." in (say.text or "")
    redirect = leg.find("Redirect")
    assert redirect is not None and redirect.attrib["method"] == "POST"
    assert redirect.text == f"https://talkstack.test/twilio/calls/{call.id}/transfer-briefed"
    assert leg.find("Dial") is None  # put through only once briefed
    assert (call.ended_reason, call.transferred_to) == ("transferred", HUMAN)
    assert call.transfer_joined_at is None

    # Briefed, Twilio asks what comes next: the human joins (and starts) the conference.
    human_sid = twilio_standin.call_sids[-1]
    joined = await briefed(twilio_standin, client, call_sid=human_sid)
    assert joined.text == room and joined.attrib["startConferenceOnEnter"] == "true"
    assert joined.attrib["endConferenceOnExit"] == "true"
    # Twilio's participant-join comes there too: a second witness.
    assert joined.attrib["statusCallback"] == (
        f"https://talkstack.test/twilio/calls/{call.id}/transfer-joined"
    )
    assert (joined.attrib["statusCallbackEvent"], joined.attrib["statusCallbackMethod"]) == (
        "join",
        "POST",
    )
    assert (await call_row(app, warm.sid)).transfer_joined_at is not None


async def events_of(receiver: WebhookReceiver, *names: str, within: float = 10.0) -> list[Any]:
    """The project's webhook events (each once, in order) once every one of `names` came."""
    deadline = time.monotonic() + within
    while True:
        seen: dict[str, Any] = {}
        for delivery in receiver.deliveries:
            body = json.loads(delivery.body)
            seen.setdefault(body["id"], body)  # a retried delivery repeats its event id
        events = list(seen.values())
        if all(any(e["event"] == name for e in events) for name in names):
            return events
        assert time.monotonic() < deadline, [e["event"] for e in events]
        await asyncio.sleep(0.02)


async def human_does_not_answer(client, twilio_standin, warm: WarmCall, status: str) -> str:
    """The callee waits on hold while the human's phone rings out (`status`); returns the
    human's Call SID."""
    human_sid = twilio_standin.call_sids[-1]
    assert twilio_standin.call(human_sid)["to"] == HUMAN
    await leg_status(twilio_standin, client, human_sid, status)
    return str(human_sid)


async def test_a_warm_transfer_nobody_answers_takes_the_callee_back_to_the_agent(
    app, client, mailbox, live, twilio_standin, llm, receiver
):
    warm = await warm_transfer_to_handoff(
        app, client, mailbox, live, twilio_standin, llm, webhook_url=receiver.url
    )
    await warm.relay.finish(handoff=warm.handoff)
    call = await eventually(app, warm.sid, lambda c: len(c.transcript) == 3)  # session saved
    human_sid = await human_does_not_answer(client, twilio_standin, warm, "no-answer")

    # The callee leaves the conference for a new relay session of the same call: no greeting
    # (the call is under way), no second recording.
    [document] = twilio_standin.redirects(warm.sid)
    resumed = RelayTwiml.parse(document)
    assert resumed.url == f"wss://talkstack.test/twilio/calls/{call.id}/relay"
    assert resumed.action == f"https://talkstack.test/twilio/calls/{call.id}/relay-ended"
    assert "welcomeGreeting" not in resumed.attributes
    assert ET.fromstring(document).find("Start") is None  # noqa: S314 (the app's TwiML)

    # The agent speaks first: it knows the transfer failed and why, and cannot try again.
    sorry = "I'm sorry, my colleague could not pick up. Can I help with the bill myself?"
    llm.reply_text(sorry)
    back = await connect_relay(twilio_standin, client, live, warm.sid, resumed)
    assert await back.reply() == sorry
    asked = llm.requests[-1]
    assert "transfer_call" not in asked.tool_names and "end_call" in asked.tool_names
    said = [(m["role"], m["content"]) for m in asked.messages[1:]]
    assert said[:2] == [
        ("user", "I want to talk about my bill with a person."),
        ("assistant", "One moment, I'll get a colleague."),
    ]
    assert said[-1][0] == "system" and "The transfer failed: nobody answered." in said[-1][1]
    assert len(said) == 3

    # The conversation goes on, and the call ends as conversations end.
    llm.reply_tool_call("end_call", {"reason": "done"}, text="Goodbye!")
    await back.say("No thanks, bye.")
    assert await back.reply() == "Goodbye!"
    end = await back.ended()
    assert json.loads(end["handoffData"]) == {"reason": "agent-ended"}
    r = await back.finish(handoff=end["handoffData"])
    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314
    cb = twilio_standin.callback(warm.sid, "status", CallStatus="completed", CallDuration="64")
    assert (await twilio_standin.deliver(client, cb)).status_code == 204
    # The session's end writes the reason and the final transcript together.
    await eventually(
        app, warm.sid, lambda c: c.status == "completed" and c.ended_reason == "agent-ended"
    )
    body = await call_object(client, warm)
    assert (body["status"], body["endedReason"], body["transferredTo"]) == (
        "completed",
        "agent-ended",
        HUMAN,
    )
    assert (body["transferCallSid"], body["transferStatus"]) == (human_sid, "no-answer")
    assert [(t["role"], t.get("name") or t["text"]) for t in body["transcript"]] == [
        ("user", "I want to talk about my bill with a person."),
        ("agent", "One moment, I'll get a colleague."),
        ("tool", "transfer_call"),
        ("tool", "transfer_call"),
        ("agent", sorry),
        ("user", "No thanks, bye."),
        ("agent", "Goodbye!"),
    ]
    failed = body["transcript"][3]
    assert failed["transferFailed"] == "no-answer"
    assert failed["result"] == "The transfer failed: nobody answered."

    # The webhook heard of the transfer, then of its failure (the callee back with the agent).
    events = await events_of(receiver, "call.transferred", "call.transfer_failed")
    named = [e for e in events if e["event"] != "call.status"]
    assert [e["event"] for e in named] == ["call.transferred", "call.transfer_failed"]
    assert named[1]["call"]["endedReason"] is None
    assert named[1]["call"]["transferStatus"] == "no-answer"
    assert named[1]["call"]["transferredTo"] == HUMAN


async def test_a_callee_who_cannot_go_back_to_the_agent_is_told_and_the_call_ends(
    app, client, mailbox, live, twilio_standin, llm
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await warm.relay.finish(handoff=warm.handoff)
    await eventually(app, warm.sid, lambda c: len(c.transcript) == 3)
    twilio_standin.fail_next(1, status=503)  # Twilio cannot redirect the call to the agent
    human_sid = await human_does_not_answer(client, twilio_standin, warm, "busy")

    # Never left on hold: what happened before this change, the callee is told and it ends.
    back, told = twilio_standin.redirects(warm.sid)
    assert RelayTwiml.parse(back).url.endswith("/relay")
    say = ET.fromstring(told).find("Say")  # noqa: S314 (the app's TwiML)
    assert say is not None and "nobody could take your call" in (say.text or "")
    assert ET.fromstring(told).find("Hangup") is not None  # noqa: S314
    call = await call_row(app, warm.sid)
    assert call.ended_reason == "transfer-failed"
    assert (call.transfer_call_sid, call.transfer_status, call.transfer_seconds) == (
        human_sid,
        "busy",
        0,
    )
    assert call.transcript[-1]["transferFailed"] == "busy"


@pytest.mark.parametrize("known_by", ["us", "twilio"])
async def test_a_callee_who_hung_up_on_hold_ends_the_call_transfer_failed(
    app, client, mailbox, live, twilio_standin, llm, known_by
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await warm.relay.finish(handoff=warm.handoff)
    await eventually(app, warm.sid, lambda c: len(c.transcript) == 3)
    if known_by == "us":  # the callee's final status came before the human's
        cb = twilio_standin.callback(warm.sid, "status", CallStatus="completed", CallDuration="40")
        assert (await twilio_standin.deliver(client, cb)).status_code == 204
    else:  # Twilio knows; its callback is still on the way
        twilio_standin.set_call(warm.sid, status="completed")
    await human_does_not_answer(client, twilio_standin, warm, "no-answer")

    call = await call_row(app, warm.sid)
    assert call.ended_reason == "transfer-failed"
    assert call.transfer_status == "no-answer"
    # Nobody to take back: nothing asked of a finished call, or only what Twilio refuses.
    expected = 0 if known_by == "us" else 2
    assert len(twilio_standin.redirects(warm.sid)) == expected
    assert twilio_standin.call(warm.sid)["status"] == "completed"


async def test_an_inbound_call_goes_back_to_its_agent_and_is_transferred_once(
    app, client, mailbox, live, twilio_standin, llm
):
    await agent_with(
        client,
        mailbox,
        twilio_standin,
        transferNumber=HUMAN,
        transferMode="warm",
        firstMessage="Clinic, Jack speaking.",
    )
    sid, relay = await inbound_call(client, live, twilio_standin)
    llm.reply_tool_call("transfer_call", {"reason": "billing"}, text="Let me get a colleague.")
    await relay.say("A person, please.")
    assert await relay.reply() == "Let me get a colleague."
    end = await relay.ended()
    await relay.finish(handoff=end["handoffData"])
    human = twilio_standin.created_calls[-1]
    assert human["To"] == [HUMAN] and human["From"] == [FROM]  # our number, not the caller's
    await eventually(app, sid, lambda c: len(c.transcript) == 4)  # greeting, turns, tool
    await leg_status(twilio_standin, client, twilio_standin.call_sids[-1], "no-answer")

    # The inbound call's recording, started by its first TwiML, still runs: no second one;
    # and no second greeting.
    [document] = twilio_standin.redirects(sid)
    assert ET.fromstring(document).find("Start") is None  # noqa: S314 (the app's TwiML)
    resumed = RelayTwiml.parse(document)
    assert "welcomeGreeting" not in resumed.attributes
    llm.reply_text("Sorry, nobody is free right now. What can I do for you?")
    back = await connect_relay(twilio_standin, client, live, sid, resumed, direction="inbound")
    assert await back.reply() == "Sorry, nobody is free right now. What can I do for you?"

    # No second transfer: the tool is gone, and a model that calls it anyway is told so.
    llm.reply_tool_call("transfer_call", {"reason": "again"})
    llm.reply_text("I cannot transfer you again, sorry.")
    await back.say("Try again, please.")
    assert await back.reply() == "I cannot transfer you again, sorry."
    assert "transfer_call" not in llm.requests[-2].tool_names
    assert "no tool called transfer_call" in llm.requests[-1].messages[-1]["content"]
    # A transfer handoff that comes back anyway is not dialed: one transfer per call.
    placed = len(twilio_standin.created_calls)
    again = json.dumps({"reason": "transferred", "transfer": {"to": HUMAN, "mode": "warm"}})
    r = await back.finish(handoff=again)
    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314
    assert ET.fromstring(r.text).find("Dial") is None  # noqa: S314
    assert len(twilio_standin.created_calls) == placed


async def test_a_warm_transfer_twilio_refuses_falls_back_to_cold(
    app, client, mailbox, live, twilio_standin, llm
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    twilio_standin.make_undialable(HUMAN, 21215)
    r = await warm.relay.finish(handoff=warm.handoff)
    dial_el = ET.fromstring(r.text).find("Dial")  # noqa: S314
    assert dial_el is not None and dial_el.text == HUMAN  # still reaches the human, unbriefed
    call = await call_row(app, warm.sid)
    # As any cold transfer: its end comes back here (nobody answering takes the callee back).
    assert dial_el.attrib["action"] == (
        f"https://talkstack.test/twilio/calls/{call.id}/transfer-dialed"
    )


# -- the human's call -------------------------------------------------------------------------


async def test_the_humans_call_is_recorded_with_its_duration_and_price(
    app, client, mailbox, live, twilio_standin, llm
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await warm.relay.finish(handoff=warm.handoff)
    human_sid = twilio_standin.call_sids[-1]
    body = await call_object(client, warm)
    assert (body["transferCallSid"], body["transferStatus"]) == (human_sid, "queued")
    assert (body["transferSeconds"], body["transferCost"]) == (None, None)

    # Signed, to the right URL, but about another call: not this transfer's.
    call = await call_row(app, warm.sid)
    stray = {
        "AccountSid": twilio_standin.account_sid,
        "CallSid": "CA" + "9" * 32,
        "CallStatus": "busy",
        "CallDuration": "0",
    }
    url = f"https://talkstack.test/twilio/calls/{call.id}/transfer-status"
    assert (await post_signed(twilio_standin, client, url, stray)).status_code == 204
    assert (await call_object(client, warm))["transferStatus"] == "queued"

    for status in ("initiated", "ringing", "in-progress"):
        await leg_status(twilio_standin, client, human_sid, status)
    await human_joins(twilio_standin, client, warm, call_sid=human_sid)
    twilio_standin.set_call(human_sid, price="-0.02550")
    await leg_status(twilio_standin, client, human_sid, "completed", CallDuration="95")
    await leg_status(twilio_standin, client, human_sid, "ringing")  # late: changes nothing

    await eventually(app, warm.sid, lambda c: c.transfer_cost is not None)
    body = await call_object(client, warm)
    assert (
        body["transferCallSid"],
        body["transferStatus"],
        body["transferSeconds"],
        body["transferCost"],
    ) == (human_sid, "completed", 95, 0.0255)
    # The callee's own call is priced on its own (when it completes), never with the human's.
    assert body["cost"] is None and body["endedReason"] == "transferred"
    assert twilio_standin.requests_to(f"/Calls/{human_sid}.json", "GET")
    assert twilio_standin.redirects(warm.sid) == []  # the human took the call


async def test_the_call_object_documents_the_transfer_fields(client):
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["CallOut"]
    for name in ("transferCallSid", "transferStatus", "transferSeconds", "transferCost"):
        assert schema["properties"][name]["description"], name
        assert schema["properties"][name]["examples"], name
        assert name not in schema["required"]  # optional: old clients never miss it


# -- the human hangs up during the briefing; the callee hangs up while the human rings --------


def briefing_redirect(twilio_standin) -> str:
    """Where the human's leg goes after the briefing (its TwiML's <Redirect>)."""
    leg = ET.fromstring(twilio_standin.created_calls[-1]["Twiml"][0])  # noqa: S314
    redirect = leg.find("Redirect")
    assert redirect is not None and redirect.text
    return redirect.text


async def briefing_ends(twilio_standin, client, *, call_sid: str) -> str:
    """Twilio follows the human's <Redirect> once the briefing is said: signed, with the
    parameters of a call in progress; the TwiML answered."""
    params = {
        "AccountSid": twilio_standin.account_sid,
        "CallSid": call_sid,
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
        "To": HUMAN,
        "From": FROM,
    }
    r = await post_signed(twilio_standin, client, briefing_redirect(twilio_standin), params)
    assert r.status_code == 200, r.text
    return r.text


async def briefed(twilio_standin, client, *, call_sid: str) -> ET.Element:
    """The human's leg after the briefing: the <Conference> it was put through to."""
    conf = ET.fromstring(await briefing_ends(twilio_standin, client, call_sid=call_sid)).find(  # noqa: S314
        "Dial/Conference"
    )
    assert conf is not None
    return conf


async def human_joins(twilio_standin, client, warm: WarmCall, *, call_sid: str) -> None:
    """Twilio's conference event for a participant joining: posted to the statusCallback of
    the human's <Conference>, signed, with the parameters Twilio sends."""
    conf = await briefed(twilio_standin, client, call_sid=call_sid)
    params = {
        "AccountSid": twilio_standin.account_sid,
        "ConferenceSid": "CF" + "4" * 32,
        "FriendlyName": conf.text or "",
        "StatusCallbackEvent": "participant-join",
        "CallSid": call_sid,
        "Muted": "false",
        "Hold": "false",
        "Coaching": "false",
        "EndConferenceOnExit": "true",
        "StartConferenceOnEnter": "true",
        "SequenceNumber": "2",
        "Timestamp": "Sat, 05 Dec 2026 09:00:00 +0000",
    }
    r = await post_signed(twilio_standin, client, conf.attrib["statusCallback"], params)
    assert r.status_code == 204, r.text


async def test_the_human_hanging_up_during_the_briefing_takes_the_callee_back_to_the_agent(
    app, client, mailbox, live, twilio_standin, llm, receiver
):
    warm = await warm_transfer_to_handoff(
        app, client, mailbox, live, twilio_standin, llm, webhook_url=receiver.url
    )
    await warm.relay.finish(handoff=warm.handoff)
    call = await eventually(app, warm.sid, lambda c: len(c.transcript) == 3)
    human_sid = twilio_standin.call_sids[-1]
    # The end of a briefing of some other call (signed, to the right URL) puts nobody through.
    stray = await briefing_ends(twilio_standin, client, call_sid="CA" + "9" * 32)
    assert "<Hangup" in stray and "<Conference" not in stray
    assert (await call_row(app, warm.sid)).transfer_joined_at is None

    # The human answers, then hangs up during the briefing: their call ends `completed`.
    await leg_status(twilio_standin, client, human_sid, "in-progress")
    assert twilio_standin.redirects(warm.sid) == []  # still listening to the briefing
    await leg_status(twilio_standin, client, human_sid, "completed", CallDuration="4")

    [document] = twilio_standin.redirects(warm.sid)  # back with the agent, never on hold
    assert RelayTwiml.parse(document).url == f"wss://talkstack.test/twilio/calls/{call.id}/relay"
    call = await call_row(app, warm.sid)
    assert (call.ended_reason, call.transfer_status, call.transfer_joined_at) == (
        None,
        "completed",
        None,
    )
    failed = call.transcript[-1]
    assert failed["transferFailed"] == "hung-up"
    assert failed["result"] == "The transfer failed: they hung up before being connected."
    events = await events_of(receiver, "call.transfer_failed")
    [event] = [e for e in events if e["event"] == "call.transfer_failed"]
    assert event["call"]["transferStatus"] == "completed"


async def test_a_human_who_joined_the_callee_ends_the_transfer_as_done(
    app, client, mailbox, live, twilio_standin, llm
):
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    await leg_status(twilio_standin, client, human_sid, "in-progress")
    await human_joins(twilio_standin, client, warm, call_sid=human_sid)
    joined = (await call_row(app, warm.sid)).transfer_joined_at
    assert joined is not None
    await human_joins(twilio_standin, client, warm, call_sid=human_sid)  # repeated: the same
    assert (await call_row(app, warm.sid)).transfer_joined_at == joined
    await leg_status(twilio_standin, client, human_sid, "completed", CallDuration="95")

    call = await call_row(app, warm.sid)
    assert (call.ended_reason, call.transfer_status, len(call.transcript)) == (
        "transferred",
        "completed",
        3,
    )
    assert twilio_standin.redirects(warm.sid) == []


async def test_a_human_put_through_is_transferred_even_if_the_conference_event_is_lost(
    app, client, mailbox, live, twilio_standin, llm
):
    # Twilio's participant-join never comes: the briefing's end already recorded the join.
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    await leg_status(twilio_standin, client, human_sid, "in-progress")
    await briefed(twilio_standin, client, call_sid=human_sid)
    await leg_status(twilio_standin, client, human_sid, "completed", CallDuration="180")

    call = await call_row(app, warm.sid)
    assert (call.ended_reason, call.transfer_status, len(call.transcript)) == (
        "transferred",
        "completed",
        3,
    )
    assert call.transfer_joined_at is not None
    assert twilio_standin.redirects(warm.sid) == []  # the callee was not taken back


async def test_a_human_briefed_after_the_callee_hung_up_is_told_and_not_put_through(
    app, client, mailbox, live, twilio_standin, llm
):
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    await leg_status(twilio_standin, client, human_sid, "in-progress")
    await callee_hangs_up(twilio_standin, client, warm)

    document = ET.fromstring(await briefing_ends(twilio_standin, client, call_sid=human_sid))  # noqa: S314
    say = document.find("Say")
    assert say is not None and say.text == "The caller has already hung up. Goodbye."
    assert document.find("Hangup") is not None and document.find("Dial") is None
    assert (await call_row(app, warm.sid)).transfer_joined_at is None


# -- the human's call, when its status callbacks are lost -------------------------------------


async def leg_check(app) -> Job:
    async with app.state.ctx.sessionmaker() as s:
        [job] = (await s.scalars(select(Job).where(Job.kind == "call.check_transfer_leg"))).all()
    return job


async def test_a_human_leg_whose_final_callback_is_lost_still_takes_the_callee_back(
    app, client, mailbox, live, twilio_standin, llm
):
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    job = await leg_check(app)
    # Due once the human's phone must have rung out (30 s), with half a minute's grace.
    assert twilio_standin.created_calls[-1]["Timeout"] == ["30"]
    assert (job.next_attempt_at - job.created_at).total_seconds() == pytest.approx(60, abs=2)
    await leg_status(twilio_standin, client, human_sid, "ringing")
    # Twilio gave up ringing; its no-answer callback never reached this server.
    twilio_standin.set_call(human_sid, status="no-answer")

    await check_leg(app.state.ctx, job)

    assert twilio_standin.requests_to(f"/Calls/{human_sid}.json", "GET")
    [document] = twilio_standin.redirects(warm.sid)  # back with the agent, not left on hold
    assert RelayTwiml.parse(document).url.endswith("/relay")
    call = await call_row(app, warm.sid)
    assert (call.ended_reason, call.transfer_status) == (None, "no-answer")
    assert call.transcript[-1]["transferFailed"] == "no-answer"
    # The callback, arriving after all, changes nothing: the callee is taken back once.
    await leg_status(twilio_standin, client, human_sid, "no-answer")
    assert len(twilio_standin.redirects(warm.sid)) == 1
    assert len((await call_row(app, warm.sid)).transcript) == 4


async def test_the_humans_call_is_checked_while_it_lives_and_recorded_from_twilio(
    app, client, mailbox, live, twilio_standin, llm
):
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    job = await leg_check(app)
    twilio_standin.set_call(human_sid, status="ringing")
    with pytest.raises(RetryLater) as later:
        await check_leg(app.state.ctx, job)
    assert later.value.delay == 20  # the callee waits: soon again
    await leg_status(twilio_standin, client, human_sid, "in-progress")
    await human_joins(twilio_standin, client, warm, call_sid=human_sid)
    twilio_standin.set_call(human_sid, status="in-progress")
    with pytest.raises(RetryLater) as later:
        await check_leg(app.state.ctx, job)
    assert later.value.delay == 300  # the two talk: now and then, for the record

    # The two hung up; the human leg's completed callback is lost.
    twilio_standin.set_call(human_sid, status="completed", duration="95", price="-0.02550")
    await check_leg(app.state.ctx, job)

    call = await eventually(app, warm.sid, lambda c: c.transfer_cost is not None)
    assert (call.transfer_status, call.transfer_seconds, call.ended_reason) == (
        "completed",
        95,
        "transferred",
    )
    assert twilio_standin.redirects(warm.sid) == []  # the human took the call
    fetches = len(twilio_standin.requests_to(f"/Calls/{human_sid}.json", "GET"))
    await check_leg(app.state.ctx, job)  # recorded: nothing more to ask Twilio
    assert len(twilio_standin.requests_to(f"/Calls/{human_sid}.json", "GET")) == fetches


async def callee_hangs_up(twilio_standin, client, warm: WarmCall) -> None:
    cb = twilio_standin.callback(warm.sid, "status", CallStatus="completed", CallDuration="40")
    assert (await twilio_standin.deliver(client, cb)).status_code == 204


async def human_call_ended(twilio_standin, human_sid: str, within: float = 10.0) -> str:
    """The human's call once this server asked Twilio to end it; its status then."""
    deadline = time.monotonic() + within
    while not twilio_standin.requests_to(f"/Calls/{human_sid}.json", "POST"):
        assert time.monotonic() < deadline, "the human's call was never ended"
        await asyncio.sleep(0.02)
    [ended] = twilio_standin.requests_to(f"/Calls/{human_sid}.json", "POST")
    assert ended.form == {"Status": ["completed"]}
    return str(twilio_standin.call(human_sid)["status"])


@pytest.mark.parametrize("human", ["ringing", "in-progress"])
async def test_a_callee_who_hangs_up_before_the_human_joins_ends_the_humans_call(
    app, client, mailbox, live, twilio_standin, llm, human
):
    """Nobody picks up (or finishes the briefing) into an empty conference."""
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    await leg_status(twilio_standin, client, human_sid, "ringing")
    if human == "in-progress":
        await leg_status(twilio_standin, client, human_sid, "in-progress")

    await callee_hangs_up(twilio_standin, client, warm)
    # A ringing call is canceled; an answered one (hearing the briefing) is hung up.
    expected = "canceled" if human == "ringing" else "completed"
    assert await human_call_ended(twilio_standin, human_sid) == expected
    await leg_status(twilio_standin, client, human_sid, expected)

    call = await eventually(app, warm.sid, lambda c: c.transfer_status == expected)
    assert (call.status, call.ended_reason) == ("completed", "transfer-failed")
    assert twilio_standin.redirects(warm.sid) == []  # nobody to take back to the agent


async def test_a_callee_who_hangs_up_after_the_human_leg_ended_asks_twilio_nothing_more(
    app, client, mailbox, live, twilio_standin, llm
):
    warm, human_sid = await on_hold(app, client, mailbox, live, twilio_standin, llm)
    await leg_status(twilio_standin, client, human_sid, "in-progress")
    await human_joins(twilio_standin, client, warm, call_sid=human_sid)
    await leg_status(twilio_standin, client, human_sid, "completed", CallDuration="95")
    await callee_hangs_up(twilio_standin, client, warm)
    await eventually(app, warm.sid, lambda c: c.cost is not None or c.status == "completed")
    await asyncio.sleep(0.3)  # the worker's turn: nothing of the human's call is due
    assert twilio_standin.requests_to(f"/Calls/{human_sid}.json", "POST") == []


async def test_a_relay_end_after_the_callee_hung_up_calls_nobody(
    app, client, mailbox, live, twilio_standin, llm
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await callee_hangs_up(twilio_standin, client, warm)  # before Twilio posts the session's end
    calls_before = len(twilio_standin.created_calls)
    r = await warm.relay.finish(handoff=warm.handoff)
    assert ET.fromstring(r.text).find("Hangup") is not None  # noqa: S314 (the app's TwiML)
    assert len(twilio_standin.created_calls) == calls_before


async def test_a_late_final_save_of_the_first_session_keeps_the_failed_transfer(
    app, client, mailbox, live, twilio_standin, llm
):
    """The human's leg can fail before the first relay session's final transcript is written
    (its end and Twilio's callbacks race): that write keeps the failure and leaves the end of
    the call to whoever has the callee now."""
    from types import SimpleNamespace

    from app.conversation.transcript import TranscriptSaver

    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await warm.relay.finish(handoff=warm.handoff)
    call = await eventually(app, warm.sid, lambda c: len(c.transcript) == 3)
    session_turns = list(call.transcript)
    await human_does_not_answer(client, twilio_standin, warm, "busy")
    await eventually(app, warm.sid, lambda c: len(c.transcript) == 4)

    # The first session's final write, late: its transcript and its end, `transferred`.
    late = SimpleNamespace(transcript=session_turns, ended_reason="transferred")
    await TranscriptSaver(app.state.ctx, call.id).finish(late)  # type: ignore[arg-type]

    call = await call_row(app, warm.sid)
    assert call.transcript[:3] == session_turns
    assert call.transcript[3]["transferFailed"] == "busy"
    assert call.ended_reason is None  # the callee is back with the agent


async def test_a_briefing_end_or_conference_event_without_twilios_signature_changes_nothing(
    app, client, mailbox, live, twilio_standin, llm
):
    warm = await warm_transfer_to_handoff(app, client, mailbox, live, twilio_standin, llm)
    await warm.relay.finish(handoff=warm.handoff)
    call = await call_row(app, warm.sid)
    human_sid = twilio_standin.call_sids[-1]
    joined = {"StatusCallbackEvent": "participant-join", "CallSid": human_sid}
    briefed = {"CallSid": human_sid, "CallStatus": "in-progress"}
    dialed = {"CallSid": warm.sid, "CallStatus": "in-progress", "DialCallStatus": "busy"}
    for path, params in (
        (f"/twilio/calls/{call.id}/transfer-joined", joined),
        (f"/twilio/calls/{call.id}/transfer-briefed", briefed),
        (f"/twilio/calls/{call.id}/transfer-dialed", dialed),
    ):
        for headers in ({}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}):
            r = await client.post(path, data=params, headers=headers)
            assert r.status_code == 403, r.text
    assert (await call_row(app, warm.sid)).transfer_joined_at is None
