"""HubSpot (docs/api/hubspot.md): connecting a project, logging every finished call, makeCall by
contact.

The app talks to the HubSpot stand-in (tests/standins/hubspot.py) through the official
`hubspot-api-client`; the sync jobs are run here one by one, so each HubSpot answer's effect is
seen, except in the whole-conversation test, where the in-process worker runs everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, get_args

import pytest
from sqlalchemy import select

from app.call.status import CallStatus
from app.hubspot import jobs as hubspot_jobs
from app.hubspot.schemas import HubSpotOut, LastSyncOut
from app.hubspot.service import ConnectionStatus
from app.hubspot.sync import HUBSPOT_STATUS, CallFacts, body, engagement
from app.jobs.worker import JobWorker, PermanentFailure, RetryLater
from app.models import Call, HubSpotConnection, Job
from app.models.hubspot_connection import SyncResult
from tests.factories import (
    CallingAgent,
    api_key_for,
    assert_error,
    assert_validation_error,
    calling_agent,
    verified_account,
)
from tests.standins.hubspot import PORTAL_ID, TOKEN
from tests.standins.twilio_relay import LiveServer, answer

FROM = "+14155550100"
TO = "+14155550123"
SYNC = hubspot_jobs.SYNC_JOB


@pytest.fixture
def settings_overrides(request, twilio_standin, hubspot, llm) -> dict[str, Any]:
    # A test changes more with @pytest.mark.parametrize("settings_overrides", [...], indirect=True).
    return {
        **twilio_standin.settings_overrides(),
        **hubspot.settings_overrides(),
        **llm.settings_overrides(),
        "run_jobs_in_process": False,
        "job_poll_interval_seconds": 0.05,
        "job_retry_base_seconds": 0.01,
        "conversation_speech_chars_per_second": 1e6,
        "conversation_silence_seconds": 30.0,
        **getattr(request, "param", {}),
    }


@pytest.fixture
async def setup(client, mailbox, twilio_standin) -> CallingAgent:
    agent = {
        "systemInstruction": "You are Jack from the clinic.",
        "firstMessage": "Hello, this is Jack from the clinic.",
    }
    return await calling_agent(client, mailbox, twilio_standin, number=FROM, agent=agent)


async def connect(client, setup, token: str = TOKEN):
    return await client.post(
        "/hubspot/connect",
        json={"projectId": setup.project, "accessToken": token},
        headers=setup.key,
    )


async def hubspot_status(client, setup) -> dict[str, Any]:
    r = await client.post("/hubspot/status", json={"projectId": setup.project}, headers=setup.key)
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()["hubspot"]
    return state


async def dial(client, setup, **body: Any) -> str:
    payload = {"projectId": setup.project, "agentId": setup.agent, **body}
    if "hubspotContactId" not in body:
        payload.setdefault("number", TO)
    r = await client.post("/call/makeCall", json=payload, headers=setup.key)
    assert r.status_code == 200, r.text
    sid: str = r.json()["call"]["call_id"]
    return sid


async def hang_up(client, twilio_standin, sid: str, status: str = "no-answer", **fields) -> None:
    r = await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "status", CallStatus=status, **fields)
    )
    assert r.status_code == 204, r.text


async def sync_jobs(app) -> list[Job]:
    async with app.state.ctx.sessionmaker() as s:
        found = await s.execute(select(Job).where(Job.kind == SYNC).order_by(Job.created_at))
        return list(found.scalars())


async def run(app, job: Job) -> Exception | None:
    """Run the sync job's handler once, as a worker would; its outcome (None: done)."""
    try:
        await hubspot_jobs.run_sync_job(app.state.ctx, job)
    except (RetryLater, PermanentFailure) as exc:
        return exc
    return None


async def call_row(app, sid: str) -> Call:
    async with app.state.ctx.sessionmaker() as s:
        return (await s.execute(select(Call).where(Call.call_sid == sid))).scalar_one()


async def connection_row(app) -> HubSpotConnection | None:
    async with app.state.ctx.sessionmaker() as s:
        return (await s.execute(select(HubSpotConnection))).scalar_one_or_none()


# -- connect, status, disconnect --------------------------------------------------------------


async def test_connect_checks_the_token_and_keeps_it_encrypted_and_unseen(
    app, client, setup, hubspot, caplog
):
    caplog.set_level(logging.DEBUG)
    assert (await hubspot_status(client, setup))["state"] == "not_connected"

    r = await connect(client, setup, token=f"  {TOKEN} ")

    assert r.status_code == 200, r.text
    assert r.json() == {
        "message": "connected HubSpot.",
        "status": "success",
        "hubspot": {
            "connected": True,
            "state": "connected",
            "portalId": PORTAL_ID,
            "connectedAt": r.json()["hubspot"]["connectedAt"],
            "lastSync": None,
        },
    }
    [asked] = hubspot.requests_to("/account-info/v3/details", "GET")
    assert asked.headers["authorization"] == f"Bearer {TOKEN}"
    row = await connection_row(app)
    assert row is not None and row.portal_id == PORTAL_ID
    assert TOKEN not in row.encrypted_token and TOKEN[8:24] not in row.encrypted_token
    status = await hubspot_status(client, setup)
    assert status["connected"] is True and status["portalId"] == PORTAL_ID
    # Never returned, never logged.
    assert TOKEN not in r.text and TOKEN not in caplog.text


async def test_a_token_hubspot_refuses_is_400_and_nothing_is_stored(app, client, setup, hubspot):
    r = await connect(client, setup, token="pat-na1-revoked-or-mistyped")
    body = assert_error(r, 400, "HUBSPOT_TOKEN_INVALID")
    assert "private app" in body["message"] and "pat-na1-revoked" not in body["message"]
    assert await connection_row(app) is None
    for unusable in ("   ", "pat-na1-ñ", "pat na1"):  # it travels in an HTTP header
        assert_validation_error(await connect(client, setup, token=unusable), "accessToken")


@pytest.mark.parametrize("settings_overrides", [{"hubspot_timeout_seconds": 0.3}], indirect=True)
async def test_hubspot_down_or_silent_is_502(app, client, setup, hubspot):
    hubspot.fail_next(status=503)
    assert_error(await connect(client, setup), 502, "HUBSPOT_ERROR")
    hubspot.hang_next(seconds=3)
    assert_error(await connect(client, setup), 502, "HUBSPOT_ERROR")
    assert await connection_row(app) is None
    assert (await connect(client, setup)).status_code == 200


async def test_disconnect_forgets_the_token(app, client, setup, hubspot):
    assert (await connect(client, setup)).status_code == 200
    for _ in range(2):  # the second time there is nothing to forget: still fine
        r = await client.post(
            "/hubspot/disconnect", json={"projectId": setup.project}, headers=setup.key
        )
        assert r.status_code == 200, r.text
        assert r.json()["hubspot"]["state"] == "not_connected"
    assert await connection_row(app) is None
    assert (await hubspot_status(client, setup))["connected"] is False


async def test_another_hubspot_account_forgets_where_calls_were_logged(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid)
    [job] = await sync_jobs(app)
    assert await run(app, job) is None
    assert (await call_row(app, sid)).hubspot_call_id is not None
    assert (await connect(client, setup)).status_code == 200  # the same account: kept
    assert (await call_row(app, sid)).hubspot_call_id is not None

    hubspot.portal_id = 777
    r = await connect(client, setup)

    assert r.json()["hubspot"]["portalId"] == 777
    call = await call_row(app, sid)
    assert call.hubspot_call_id is None and call.hubspot_contact_id is None


async def test_another_user_cannot_connect_read_or_disconnect_a_projects_hubspot(
    app, client, setup, hubspot, mailbox
):
    assert (await connect(client, setup)).status_code == 200
    before = await connection_row(app)
    other = await verified_account(client, mailbox)
    theirs = {"x-api-key": await api_key_for(client, other)}
    asked = len(hubspot.requests)
    for path, extra in (
        ("/hubspot/connect", {"accessToken": TOKEN}),
        ("/hubspot/status", {}),
        ("/hubspot/disconnect", {}),
    ):
        r = await client.post(path, json={"projectId": setup.project, **extra}, headers=theirs)
        missing = await client.post(
            path, json={"projectId": str(uuid.uuid4()), **extra}, headers=theirs
        )
        assert_error(r, 404, "PROJECT_NOT_FOUND")
        assert r.json() == missing.json()
    after = await connection_row(app)
    assert before is not None and after is not None
    assert (after.encrypted_token, after.status) == (before.encrypted_token, before.status)
    assert len(hubspot.requests) == asked  # HubSpot was not even asked


# -- every finished call lands in HubSpot -------------------------------------------------------


async def test_a_call_of_an_unconnected_project_is_not_synced(app, client, setup, twilio_standin):
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid)
    assert await sync_jobs(app) == []


async def test_a_missed_call_is_logged_on_a_new_contact(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    assert await sync_jobs(app) == []  # not before the call is over
    await hang_up(client, twilio_standin, sid, "no-answer")

    [job] = await sync_jobs(app)
    assert await run(app, job) is None

    [contact] = hubspot.contacts()
    assert contact["properties"]["phone"] == TO
    [logged] = hubspot.calls()
    props = logged["properties"]
    assert props["hs_call_direction"] == "OUTBOUND" and props["hs_call_status"] == "NO_ANSWER"
    assert props["hs_call_from_number"] == FROM and props["hs_call_to_number"] == TO
    assert props["hs_call_duration"] == "0" and props["hs_timestamp"].endswith("Z")
    assert sid in props["hs_call_body"] and "no-answer" in props["hs_call_body"]
    assert hubspot.associations_of(logged["id"]) == [(contact["id"], 194)]
    call = await call_row(app, sid)
    assert (call.hubspot_contact_id, call.hubspot_call_id) == (contact["id"], logged["id"])
    last = (await hubspot_status(client, setup))["lastSync"]
    assert last["result"] == "success" and last["callSid"] == sid and last["message"] is None


async def test_a_job_that_runs_twice_logs_one_engagement_and_contacts_are_reused(
    app, client, setup, hubspot, twilio_standin
):
    # Typed in HubSpot's UI, not in E.164: found through HubSpot's normalised copy.
    known = hubspot.add_contact(phone="(415) 555-0123", firstname="John")
    hubspot.add_contact(phone="+44 20 7946 0958")
    assert (await connect(client, setup)).status_code == 200
    first = await dial(client, setup)
    await hang_up(client, twilio_standin, first, "busy")
    [job] = await sync_jobs(app)

    assert await run(app, job) is None
    assert await run(app, job) is None  # at least once: a second run changes nothing

    [logged] = hubspot.calls()
    assert logged["properties"]["hs_call_status"] == "BUSY"
    assert hubspot.associations_of(logged["id"]) == [(known, 194)]
    assert len(hubspot.requests_to(f"/crm/v3/objects/calls/{logged['id']}", "PATCH")) == 1
    assert len(hubspot.requests_to("/crm/v3/objects/contacts/search")) == 1

    second = await dial(client, setup)
    await hang_up(client, twilio_standin, second, "no-answer")
    [_, job2] = await sync_jobs(app)
    assert await run(app, job2) is None
    assert len(hubspot.contacts()) == 2  # nobody new
    [_, two] = hubspot.calls()
    assert hubspot.associations_of(two["id"]) == [(known, 194)]


async def test_hubspot_5xx_retries_with_backoff_without_creating_anything_twice(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    hubspot.search_lag_seconds = 60  # the new contact stays unsearchable for the retry
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid, "failed")
    [job] = await sync_jobs(app)
    hubspot.fail_next(status=502, path="/crm/v3/objects/calls")

    outcome = await run(app, job)

    assert isinstance(outcome, RetryLater) and outcome.delay is None  # the worker's backoff
    last = (await hubspot_status(client, setup))["lastSync"]
    assert (
        last["result"] == "error" and "502" in last["message"] and "will retry" in last["message"]
    )
    assert await run(app, job) is None
    assert len(hubspot.contacts()) == 1 and len(hubspot.calls()) == 1
    assert (await hubspot_status(client, setup))["lastSync"]["result"] == "success"


async def test_a_refusal_stops_that_calls_sync_but_not_the_connection(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid)
    [job] = await sync_jobs(app)
    hubspot.fail_next(status=403, path="/crm/v3/objects/contacts/search")

    outcome = await run(app, job)

    assert isinstance(outcome, PermanentFailure) and "MISSING_SCOPES" in outcome.reason
    status = await hubspot_status(client, setup)
    assert status["state"] == "connected" and status["lastSync"]["result"] == "error"
    assert "scopes" in status["lastSync"]["message"] and status["lastSync"]["callSid"] == sid


async def test_hubspot_429_waits_as_long_as_retry_after_says(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid)
    hubspot.fail_next(status=429, retry_after=7, path="/crm/v3/objects/contacts/search")
    ctx = app.state.ctx
    worker = JobWorker(
        ctx.sessionmaker, {SYNC: partial(hubspot_jobs.run_sync_job, ctx)}, poll_interval=0.05
    )
    await worker.start()
    try:
        deadline = time.monotonic() + 10
        while True:
            [job] = await sync_jobs(app)
            if job.status == "queued" and job.attempts == 1:
                break
            assert time.monotonic() < deadline, (job.status, job.attempts)
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
    assert "rate limiting" in (job.last_error or "")
    wait = job.next_attempt_at - job.updated_at
    assert timedelta(seconds=6.5) <= wait <= timedelta(seconds=7.5)
    assert hubspot.calls() == []


async def test_a_revoked_token_breaks_the_connection_and_stops_the_syncs(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    first = await dial(client, setup)
    await hang_up(client, twilio_standin, first)
    [job] = await sync_jobs(app)
    hubspot.revoke()

    outcome = await run(app, job)

    assert isinstance(outcome, PermanentFailure)
    status = await hubspot_status(client, setup)
    assert status["connected"] is False and status["state"] == "broken"
    assert status["lastSync"]["result"] == "error" and "401" in status["lastSync"]["message"]
    # Nothing more is tried: a queued job ends quietly, and no new one is queued.
    asked = len(hubspot.requests)
    assert await run(app, job) is None and len(hubspot.requests) == asked
    second = await dial(client, setup)
    await hang_up(client, twilio_standin, second)
    assert len(await sync_jobs(app)) == 1
    # A new token mends it.
    hubspot.tokens.add("pat-na1-new")
    r = await connect(client, setup, token="pat-na1-new")
    assert r.json()["hubspot"]["state"] == "connected"


# -- makeCall with hubspotContactId -----------------------------------------------------------


async def record(client, twilio_standin, sid: str) -> str:
    """Twilio's recording callback for the call; the URL the app stores (and HubSpot gets)."""
    cb = twilio_standin.callback(sid, "recording")
    r = await twilio_standin.deliver(client, cb)
    assert r.status_code == 204, r.text
    return cb.params["RecordingUrl"] + ".mp3"


@pytest.mark.parametrize("recording_first", [True, False], ids=["recording-first", "status-first"])
async def test_the_engagement_carries_the_recording_whichever_callback_comes_first(
    app, client, setup, hubspot, twilio_standin, recording_first
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    if recording_first:
        url = await record(client, twilio_standin, sid)
    await hang_up(client, twilio_standin, sid, "completed", CallDuration="12")
    [job] = await sync_jobs(app)
    assert await run(app, job) is None
    if not recording_first:
        # Twilio's usual order: the recording comes seconds after the final status, when the
        # call is logged already. The engagement is updated with it.
        [logged] = hubspot.calls()
        assert "hs_call_recording_url" not in logged["properties"]
        url = await record(client, twilio_standin, sid)
        [_, again] = await sync_jobs(app)
        assert await run(app, again) is None
        assert len(hubspot.requests_to(f"/crm/v3/objects/calls/{logged['id']}", "PATCH")) == 1

    [logged] = hubspot.calls()  # one engagement either way
    assert url.startswith("https://api.twilio.com/")
    assert logged["properties"]["hs_call_recording_url"] == url
    assert logged["properties"]["hs_call_duration"] == "12000"


async def test_a_recording_before_the_sync_ran_is_in_its_one_engagement(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid, "completed", CallDuration="3")
    url = await record(client, twilio_standin, sid)  # the sync is queued, not run yet
    [job] = await sync_jobs(app)  # it reads the call when it runs: no second sync
    assert await run(app, job) is None
    [logged] = hubspot.calls()
    assert logged["properties"]["hs_call_recording_url"] == url
    assert hubspot.requests_to("/crm/v3/objects/calls/", "PATCH") == []


async def test_a_second_sync_waits_while_the_first_may_be_logging_the_call(
    app, client, setup, hubspot, twilio_standin
):
    assert (await connect(client, setup)).status_code == 200
    sid = await dial(client, setup)
    await hang_up(client, twilio_standin, sid, "completed", CallDuration="3")
    [job] = await sync_jobs(app)
    # Another worker's sync read the call a moment ago and has not stored an engagement id yet.
    async with app.state.ctx.sessionmaker() as s, s.begin():
        call = (await s.execute(select(Call).where(Call.call_sid == sid))).scalar_one()
        call.hubspot_read_at = datetime.now(UTC) - timedelta(seconds=1)

    outcome = await run(app, job)
    assert isinstance(outcome, RetryLater) and outcome.delay is not None and outcome.delay > 5
    assert hubspot.calls() == []
    # That worker died mid-sync: once it cannot be creating any more, this one logs the call.
    async with app.state.ctx.sessionmaker() as s, s.begin():
        call = (await s.execute(select(Call).where(Call.call_sid == sid))).scalar_one()
        call.hubspot_read_at = datetime.now(UTC) - timedelta(minutes=5)
    assert await run(app, job) is None
    assert len(hubspot.calls()) == 1


async def test_make_call_to_a_hubspot_contact(app, client, setup, hubspot, twilio_standin):
    r = await client.put(
        "/agent",
        json={
            "projectId": setup.project,
            "agentId": setup.agent,
            "systemInstruction": "You call {{hubspot.firstname}} ({{hubspot.jobtitle}}).",
            "firstMessage": "Hi {{hubspot.firstname}}, this is {{me}}.",
        },
        headers=setup.key,
    )
    assert r.status_code == 200, r.text
    contact = hubspot.add_contact(mobilephone="+1 415 555 0177", firstname="Ana", jobtitle="CTO")
    assert (await connect(client, setup)).status_code == 200

    sid = await dial(client, setup, hubspotContactId=contact, dynamicVariables={"me": "Jack"})

    [asked] = twilio_standin.created_calls
    assert asked["To"] == ["+14155550177"]
    call = await call_row(app, sid)
    assert call.to_number == "+14155550177" and call.hubspot_contact_id == contact
    assert call.system_instruction == "You call Ana (CTO)."
    assert call.first_message == "Hi Ana, this is Jack."
    assert call.dynamic_variables["hubspot.firstname"] == "Ana"
    [read] = hubspot.requests_to(f"/crm/v3/objects/contacts/{contact}", "GET")
    assert "jobtitle" in ",".join(read.query["properties"])

    await hang_up(client, twilio_standin, sid, "no-answer")
    [job] = await sync_jobs(app)
    assert await run(app, job) is None
    assert hubspot.requests_to("/crm/v3/objects/contacts/search") == []  # the contact is known
    [logged] = hubspot.calls()
    assert hubspot.associations_of(logged["id"]) == [(contact, 194)]


async def test_make_call_refusals_about_hubspot(app, client, setup, hubspot, twilio_standin):
    def make(**body: Any):
        payload = {"projectId": setup.project, "agentId": setup.agent, **body}
        return client.post("/call/makeCall", json=payload, headers=setup.key)

    assert_validation_error(await make())
    assert_validation_error(await make(number=TO, hubspotContactId="101"))
    assert_error(await make(hubspotContactId="101"), 400, "HUBSPOT_NOT_CONNECTED")
    assert (await connect(client, setup)).status_code == 200
    assert_error(await make(hubspotContactId="999"), 404, "HUBSPOT_CONTACT_NOT_FOUND")
    assert_error(await make(hubspotContactId="../101"), 404, "HUBSPOT_CONTACT_NOT_FOUND")
    nameless = hubspot.add_contact(phone="not a number", firstname="Bo")
    assert_error(await make(hubspotContactId=nameless), 400, "HUBSPOT_CONTACT_HAS_NO_NUMBER")
    hubspot.fail_next(status=500)
    assert_error(await make(hubspotContactId=nameless), 502, "HUBSPOT_ERROR")
    hubspot.revoke()
    assert_error(await make(hubspotContactId=nameless), 400, "HUBSPOT_NOT_CONNECTED")
    assert (await hubspot_status(client, setup))["state"] == "broken"  # kept though refused
    assert twilio_standin.created_calls == []


# -- a whole call: conversation, analysis, then HubSpot ---------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": True}], indirect=True)
async def test_a_conversation_reaches_hubspot_once_after_its_analysis(
    app, client, setup, hubspot, twilio_standin, llm
):
    assert (await connect(client, setup)).status_code == 200
    async with LiveServer(app) as live:
        sid = await dial(client, setup)
        relay = await answer(twilio_standin, client, live, sid)
        await hang_up(client, twilio_standin, sid, "in-progress")
        llm.reply_tool_call("end_call", text="Booked for Friday <3, bye.")
        llm.reply_json(
            {"summary": "Booked Friday for two.", "sentiment": "positive", "answers": {}}
        )
        await relay.say("Two of us, Friday please.")
        await relay.ended()
        await relay.finish()
        r = await twilio_standin.deliver(client, twilio_standin.callback(sid, "recording"))
        assert r.status_code in (200, 204), r.text
        await hang_up(client, twilio_standin, sid, "completed", CallDuration="20")
        deadline = time.monotonic() + 15
        while not hubspot.calls() or (await call_row(app, sid)).hubspot_call_id is None:
            assert time.monotonic() < deadline, "the call never reached HubSpot"
            await asyncio.sleep(0.05)

    assert len(await sync_jobs(app)) == 1  # from the analysis, not from the final status
    [logged] = hubspot.calls()
    props = logged["properties"]
    assert props["hs_call_status"] == "COMPLETED" and props["hs_call_duration"] == "20000"
    assert props["hs_call_recording_url"].startswith("https://api.twilio.com/")
    notes = props["hs_call_body"]
    assert "Booked Friday for two." in notes and "positive" in notes
    assert "Two of us, Friday please." in notes
    assert "Booked for Friday &lt;3, bye." in notes  # the transcript is escaped, not HTML


# -- what HubSpot is told ---------------------------------------------------------------------


def _facts(**changes: Any) -> CallFacts:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "project_id": uuid.uuid4(),
        "call_sid": "CA" + "1" * 32,
        "direction": "inbound",
        "to_number": FROM,
        "from_number": TO,
        "status": "voicemail",
        "ended_reason": "completed",
        "seconds": 9,
        "recording_urls": ["http://insecure.example/r.mp3"],
        "data": {},
        "transcript": [],
        "started_at": datetime(2026, 11, 26, tzinfo=UTC),
        "hubspot_contact_id": None,
        "hubspot_call_id": None,
    }
    values.update(changes)
    return CallFacts(**values)


def test_an_inbound_call_is_logged_as_inbound_from_the_caller():
    props = engagement(_facts())
    assert props["hs_call_direction"] == "INBOUND" and props["hs_call_title"] == f"Call from {TO}"
    assert props["hs_call_status"] == "COMPLETED" and props["hs_call_duration"] == "9000"
    assert props["hs_timestamp"] == "2026-11-26T00:00:00.000Z"
    assert "hs_call_recording_url" not in props  # HubSpot takes HTTPS recordings only
    assert _facts().counterpart == TO


def test_a_long_transcript_is_shortened_to_fit_hubspot():
    turn = {"role": "user", "text": "blah " * 1000}
    notes = body(_facts(transcript=[turn] * 100))
    assert len(notes) < 65_536 and notes.count("blah") > 5_000
    assert "(transcript shortened)" in notes


# -- batch rows with hubspotContactId ---------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": True}], indirect=True)
async def test_batch_rows_may_name_hubspot_contacts(app, client, setup, hubspot, twilio_standin):
    r = await client.put(
        "/agent",
        json={"projectId": setup.project, "agentId": setup.agent,
              "systemInstruction": "You call {{hubspot.firstname}} about {{topic}}."},
        headers=setup.key,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    ana = hubspot.add_contact(mobilephone="+1 415 555 0177", firstname="Ana")
    nobody = hubspot.add_contact(firstname="No Number")
    content = (
        "number,hubspotContactId,topic\n"
        f",{ana},the offer\n"
        ",999999,the offer\n"  # no such contact: fails when its turn comes
        f",{nobody},the offer\n"  # a contact without a phone number
        "+14155550123,,the renewal\n"  # a number: nothing fills {{hubspot.firstname}}
        f"+14155550124,{ana},x\n"  # both: refused at upload
        ",abc,x\n"
    ).encode()

    def upload() -> Any:
        return client.post(
            "/call/batch-call",
            data={"projectId": setup.project, "agentId": setup.agent},
            files={"file": ("leads.csv", content, "text/csv")},
            headers=setup.key,
        )

    # Not connected yet: the rows that name contacts are refused, the others go.
    r = await upload()
    assert r.status_code == 200, r.text
    refused = {x["row"]: x["error"] for x in r.json()["batch"]["rejected"]}
    assert refused[2] == "hubspotContactId needs the project connected to HubSpot"
    await client.post(f"/call/batch-call/{r.json()['batch']['id']}/cancel", headers=setup.key)

    assert (await connect(client, setup)).status_code == 200
    r = await upload()
    batch = r.json()["batch"]
    assert (batch["total"], batch["accepted"]) == (6, 3)
    assert {x["row"]: x["error"] for x in batch["rejected"]} == {
        5: "missing variables: hubspot.firstname",
        6: "give number or hubspotContactId, not both",
        7: "hubspotContactId is not a HubSpot contact id",
    }
    deadline = time.monotonic() + 20
    while True:
        r = await client.get(f"/call/batch-call/{batch['id']}", headers=setup.key)
        body = r.json()
        if body["batch"]["status"] != "running" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    rows = {row["row"]: row for row in body["rows"]}
    assert body["batch"]["status"] == "completed"
    assert (rows[2]["state"], rows[2]["number"]) == ("dialed", "+14155550177")
    assert rows[3]["state"] == "failed" and "contact" in rows[3]["error"].lower()
    assert rows[4]["state"] == "failed" and rows[4]["error"]
    call = await call_row(app, rows[2]["callSid"])
    assert call.hubspot_contact_id == ana
    assert call.system_instruction == "You call Ana about the offer."
    assert [twilio_standin.call(s)["to"] for s in twilio_standin.call_sids] == ["+14155550177"]


def test_every_call_status_has_a_hubspot_status() -> None:
    assert set(HUBSPOT_STATUS) == set(CallStatus)


def test_the_api_schema_lists_every_connection_status() -> None:
    # HubSpotOut.state is a Literal (an inline enum in the OpenAPI document): the connection's
    # statuses, and `not_connected` for a project without one.
    state = HubSpotOut.model_fields["state"].annotation
    assert get_args(state) == (*ConnectionStatus, "not_connected")


def test_the_api_schema_lists_every_sync_result() -> None:
    assert get_args(LastSyncOut.model_fields["result"].annotation) == tuple(SyncResult)
