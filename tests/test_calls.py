"""makeCall through the Twilio stand-in, Twilio's callbacks, and reading calls back."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, get_args

import pytest
from sqlalchemy import event, func, select
from twilio.request_validator import RequestValidator

from app.call import callbacks
from app.call import schemas as call_schemas
from app.call.jobs import check_call
from app.call.status import CallStatus
from app.jobs.worker import PermanentFailure, RetryLater
from app.models import Agent, Call, Job, Project
from tests.factories import (
    CallingAgent,
    api_key_for,
    assert_error,
    calling_agent,
    verified_account,
)
from tests.standins.twilio import AUTH_TOKEN

FROM = "+14155550100"
TO = "+14155550123"


@pytest.fixture
def settings_overrides(twilio_standin) -> dict[str, Any]:
    return {**twilio_standin.settings_overrides(), "run_jobs_in_process": False}


@pytest.fixture
async def setup(client, mailbox, twilio_standin) -> CallingAgent:
    agent = {
        "systemInstruction": "You are Jack calling {{name}}.",
        "firstMessage": "Hi {{name}}, this is Jack & co.",
        "maxCallDurationSeconds": 300,
    }
    return await calling_agent(client, mailbox, twilio_standin, number=FROM, agent=agent)


async def make_call(client, setup, *, headers=None, **body: Any):
    payload = {
        "number": TO,
        "projectId": setup.project,
        "agentId": setup.agent,
        "dynamicVariables": {"name": "John"},
        **body,
    }
    return await client.post(
        "/call/makeCall", json=payload, headers={**setup.key, **(headers or {})}
    )


async def calls(app) -> list[Call]:
    async with app.state.ctx.sessionmaker() as s:
        return list((await s.execute(select(Call).order_by(Call.created_at))).scalars())


async def test_make_call_asks_twilio_for_everything(client, setup, twilio_standin, app):
    r = await make_call(client, setup, number="+1 (415) 555-0123")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "call made successfully." and body["status"] == "success"
    sid = body["call"]["call_id"]
    assert sid.startswith("CA") and len(sid) == 34
    assert body["call"]["to"] == TO and body["call"]["from"] == FROM
    (asked,) = twilio_standin.created_calls
    (call,) = await calls(app)
    base = f"https://talkstack.test/twilio/calls/{call.id}"
    assert asked["To"] == [TO] and asked["From"] == [FROM]
    assert asked["Url"] == [f"{base}/twiml"]
    assert asked["StatusCallback"] == [f"{base}/status"]
    assert asked["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert asked["Record"] == ["true"]
    assert asked["RecordingStatusCallback"] == [f"{base}/recording"]
    assert asked["MachineDetection"] == ["Enable"] and asked["AsyncAmd"] == ["true"]
    assert asked["AsyncAmdStatusCallback"] == [f"{base}/amd"]
    assert asked["TimeLimit"] == ["300"]
    assert call.call_sid == sid and call.status == "queued"
    assert call.system_instruction == "You are Jack calling John."
    assert call.first_message == "Hi John, this is Jack & co."
    assert call.dynamic_variables == {"name": "John"}


async def test_missing_variables_are_listed_and_nothing_dials(client, setup, twilio_standin, app):
    r = await make_call(client, setup, dynamicVariables={})
    body = assert_error(r, 400, "MISSING_VARIABLES", missing=["name"])
    assert "name" in body["message"]
    assert twilio_standin.created_calls == [] and await calls(app) == []


@pytest.mark.parametrize("number", ["12345", "+1415555", "+1-800-FLOWERS", ""])
async def test_invalid_destination(client, setup, twilio_standin, app, number):
    r = await make_call(client, setup, number=number)
    assert r.status_code == 400
    assert twilio_standin.created_calls == [] and await calls(app) == []


async def test_agent_without_number_is_400(client, setup, twilio_standin, app):
    r = await client.post(
        "/agent/create-agent",
        json={"name": "N", "systemInstruction": "x", "projectId": setup.project},
        headers=setup.key,
    )
    r = await make_call(client, setup, agentId=r.json()["data"]["id"])
    assert_error(r, 400, "AGENT_HAS_NO_NUMBER")


async def test_unknown_agent_or_foreign_project_is_404(client, setup, mailbox):
    assert (await make_call(client, setup, agentId=str(uuid.uuid4()))).status_code == 404
    other = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, other)}
    r = await client.post(
        "/call/makeCall",
        json={"number": TO, "projectId": setup.project, "agentId": setup.agent},
        headers=key,
    )
    assert_error(r, 404, "PROJECT_NOT_FOUND")


async def test_twilio_refusal_is_400_and_the_call_is_failed(client, setup, twilio_standin, app):
    twilio_standin.make_undialable(TO, code=21217)
    r = await make_call(client, setup)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "TWILIO_REJECTED" and r.json()["twilioCode"] == 21217
    (call,) = await calls(app)
    assert call.status == "failed" and call.error_code == "21217" and call.call_sid is None


async def test_twilio_down_is_502_and_the_call_is_failed(client, setup, twilio_standin, app):
    twilio_standin.fail_next(1, status=503)
    r = await make_call(client, setup)
    assert r.status_code == 502 and r.json()["code"] == "TWILIO_ERROR"
    (call,) = await calls(app)
    assert call.status == "failed"


async def test_idempotency_key_replays_without_dialing(client, setup, twilio_standin, app):
    h = {"Idempotency-Key": "order-42"}
    first = await make_call(client, setup, headers=h)
    second = await make_call(client, setup, headers=h)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(twilio_standin.created_calls) == 1 and len(await calls(app)) == 1
    changed = await make_call(client, setup, headers=h, number="+14155550124")
    assert_error(changed, 409, "IDEMPOTENCY_KEY_REUSED")
    assert len(twilio_standin.created_calls) == 1
    other = await make_call(client, setup, headers={"Idempotency-Key": "order-43"})
    assert other.json()["call"]["call_id"] != first.json()["call"]["call_id"]


async def test_concurrent_retries_with_one_key_dial_once(client, setup, twilio_standin, app):
    h = {"Idempotency-Key": "same"}
    results = await asyncio.gather(*(make_call(client, setup, headers=h) for _ in range(4)))
    assert len(twilio_standin.created_calls) == 1
    assert {r.status_code for r in results} <= {200, 409}
    assert sum(r.status_code == 200 for r in results) >= 1


async def _placed(client, setup) -> str:
    r = await make_call(client, setup)
    assert r.status_code == 200, r.text
    sid: str = r.json()["call"]["call_id"]
    return sid


async def get_call(client, setup, sid: str, key: str = "sid") -> dict[str, Any]:
    r = await client.post("/call", json={key: sid, "projectId": setup.project}, headers=setup.key)
    assert r.status_code == 200, r.text
    return r.json()


async def test_status_callbacks_move_forward_only(client, setup, twilio_standin, app):
    sid = await _placed(client, setup)
    for status in ("initiated", "ringing", "in-progress"):
        r = await twilio_standin.deliver(
            client, twilio_standin.callback(sid, "status", CallStatus=status)
        )
        assert r.status_code in (200, 204), r.text
    done = twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration="23")
    assert (await twilio_standin.deliver(client, done)).status_code in (200, 204)
    late = twilio_standin.callback(sid, "status", CallStatus="ringing", SequenceNumber="1")
    await twilio_standin.deliver(client, late)
    # A replay of the completed callback changes nothing either.
    await twilio_standin.deliver(client, done)
    call = await get_call(client, setup, sid, key="callSid")
    assert call["status"] == "completed" and call["seconds"] == 23
    assert call["from"] == FROM and call["to"] == TO and call["phoneNumber"] == TO
    assert call["callSid"] == sid and call["direction"] == "outbound"
    assert call["date"].endswith("+0000")
    async with app.state.ctx.sessionmaker() as s:
        kinds = [j.kind for j in (await s.execute(select(Job).order_by(Job.created_at))).scalars()]
    assert kinds.count("call.price") == 1


async def test_bad_or_missing_signature_is_403_and_changes_nothing(
    client, setup, twilio_standin, app
):
    sid = await _placed(client, setup)
    cb = twilio_standin.callback(sid, "status", CallStatus="ringing")
    forged = {**cb.params, "CallStatus": "completed"}
    path = cb.url.removeprefix("https://talkstack.test")
    r = await client.post(path, data=forged, headers=cb.headers)
    assert_error(r, 403, "INVALID_TWILIO_SIGNATURE")
    r = await client.post(path, data=cb.params)
    assert r.status_code == 403
    (call,) = await calls(app)
    assert call.status == "queued"


async def test_answering_machine_makes_voicemail(client, setup, twilio_standin):
    sid = await _placed(client, setup)
    await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "status", CallStatus="in-progress")
    )
    await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "amd", AnsweredBy="machine_end_beep")
    )
    await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration="9")
    )
    call = await get_call(client, setup, sid)
    assert call["status"] == "voicemail" and call["answeredBy"] == "machine_end_beep"


async def test_recording_urls(client, setup, twilio_standin):
    sid = await _placed(client, setup)
    cb = twilio_standin.callback(sid, "recording")
    await twilio_standin.deliver(client, cb)
    await twilio_standin.deliver(client, cb)
    call = await get_call(client, setup, sid)
    assert call["recordingUrls"] == [cb.params["RecordingUrl"] + ".mp3"]


async def test_callback_for_unknown_call_is_ignored(client, setup, twilio_standin, app):
    sid = await _placed(client, setup)
    cb = twilio_standin.callback(sid, "status", CallStatus="ringing")
    (call,) = await calls(app)
    # Same signed request shape, but for a call id this server never made.
    other_url = cb.url.replace(str(call.id), str(uuid.uuid4()))
    signed = {
        "X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(other_url, cb.params)
    }
    r = await client.post(
        other_url.removeprefix("https://talkstack.test"), data=cb.params, headers=signed
    )
    assert r.status_code in (200, 204)
    assert (await calls(app))[0].status == "queued"


async def test_twiml_greets_with_the_rendered_first_message(client, setup, twilio_standin):
    sid = await _placed(client, setup)
    r = await twilio_standin.deliver(client, twilio_standin.twiml_request(sid))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    assert 'welcomeGreeting="Hi John, this is Jack &amp; co."' in r.text
    assert "<ConversationRelay " in r.text


async def test_twiml_for_an_unknown_call_hangs_up(client, setup, twilio_standin):
    sid = await _placed(client, setup)
    cb = twilio_standin.twiml_request(sid, CallSid="CA" + "9" * 32)
    r = await twilio_standin.deliver(client, cb)
    assert r.status_code == 200
    assert "<Hangup />" in r.text and "ConversationRelay" not in r.text


async def test_get_call_of_another_user_is_404(client, setup, mailbox):
    sid = await _placed(client, setup)
    other = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, other)}
    assert_error(await client.post("/call", json={"sid": sid}, headers=key), 404, "CALL_NOT_FOUND")
    assert_error(
        await client.post("/call", json={"sid": "CA" + "0" * 32}, headers=setup.key),
        404,
        "CALL_NOT_FOUND",
    )


async def test_price_job_stores_positive_cost(client, setup, twilio_standin, app):
    sid = await _placed(client, setup)
    await twilio_standin.deliver(
        client, twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration="30")
    )
    twilio_standin.set_call(
        sid, price="-0.01300", price_unit="USD", duration="30", status="completed"
    )
    from app.call.jobs import fetch_price

    async with app.state.ctx.sessionmaker() as s:
        job = (await s.execute(select(Job).where(Job.kind == "call.price"))).scalar_one()
    await fetch_price(app.state.ctx, job)
    async with app.state.ctx.sessionmaker() as s:
        call = (await s.execute(select(Call))).scalar_one()
        assert call.cost == Decimal("0.013") and call.cost_unit == "USD"
    assert (await get_call(client, setup, sid))["cost"] == 0.013
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(Call))).scalar() == 1


# -- a final status callback that never came ------------------------------------------------


async def _check_job(app) -> Job:
    (job,) = await _jobs(app, "call.check")
    return job


async def test_a_lost_final_callback_is_read_from_twilios_record(
    client, setup, twilio_standin, app
):
    await _hook(app, setup)
    sid = await _placed(client, setup)
    job = await _check_job(app)
    async with app.state.ctx.sessionmaker() as s:
        agent = await s.get(Agent, uuid.UUID(setup.agent))
        assert agent is not None
    # Due once the call must have ended: ringing (60 s), the agent's longest call, then five
    # minutes' grace.
    due = 60 + agent.max_call_duration_seconds + 300
    assert (job.next_attempt_at - job.created_at).total_seconds() == pytest.approx(due, abs=2)
    ringing = twilio_standin.callback(sid, "status", CallStatus="ringing")
    await twilio_standin.deliver(client, ringing)
    # Twilio finished the call, but its completed callback never reached this server.
    twilio_standin.set_call(sid, status="completed", duration="42")

    await check_call(app.state.ctx, job)

    assert twilio_standin.requests_to(f"/Calls/{sid}.json", "GET")
    call = await get_call(client, setup, sid)
    assert (call["status"], call["seconds"]) == ("completed", 42)
    # As the callback would have: the project's webhook hears it, the price is fetched.
    statuses = [
        json.loads(j.payload["body"])["call"]["status"]
        for j in await _jobs(app, "webhook.call_event")
    ]
    assert statuses[-1] == "completed"
    assert len(await _jobs(app, "call.price")) == 1


async def test_the_check_asks_twilio_nothing_once_the_callback_came(
    client, setup, twilio_standin, app
):
    sid = await _placed(client, setup)
    done = twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration="23")
    await twilio_standin.deliver(client, done)
    fetches = len(twilio_standin.requests_to(f"/Calls/{sid}.json", "GET"))

    await check_call(app.state.ctx, await _check_job(app))

    assert len(twilio_standin.requests_to(f"/Calls/{sid}.json", "GET")) == fetches
    assert (await get_call(client, setup, sid))["seconds"] == 23


async def test_a_call_twilio_does_not_know_is_not_checked_again(client, setup, app):
    sid = await _placed(client, setup)
    async with app.state.ctx.sessionmaker() as s:
        call = (await s.execute(select(Call).where(Call.call_sid == sid))).scalar_one()
        call.call_sid = "CA" + "f" * 32  # a SID Twilio never gave
        await s.commit()

    with pytest.raises(PermanentFailure, match="Twilio has no call"):
        await check_call(app.state.ctx, await _check_job(app))

    async with app.state.ctx.sessionmaker() as s:
        assert (await s.get(Call, call.id)).status == "queued"


async def test_a_call_twilio_still_has_live_is_checked_again_later(
    client, setup, twilio_standin, app
):
    sid = await _placed(client, setup)
    twilio_standin.set_call(sid, status="in-progress")

    with pytest.raises(RetryLater) as later:
        await check_call(app.state.ctx, await _check_job(app))

    assert later.value.delay == 300
    assert (await get_call(client, setup, sid))["status"] == "queued"


# -- status callbacks written in batches ---------------------------------------------------------


async def _hook(app, setup) -> None:
    """The project gets a webhook URL (set in the database: nothing is delivered here)."""
    async with app.state.ctx.sessionmaker() as s:
        project = await s.get(Project, uuid.UUID(setup.project))
        assert project is not None
        project.call_status_webhook = "https://hooks.example.com/talkstack"
        project.webhook_secret = "s" * 32
        await s.commit()


@contextmanager
def counted_commits(app) -> Iterator[list[int]]:
    """One entry per commit the app's engine makes while the block runs."""
    commits: list[int] = []
    engine = app.state.ctx.engine.sync_engine

    def count(_conn: Any) -> None:
        commits.append(1)

    event.listen(engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(engine, "commit", count)


async def _jobs(app, kind: str) -> list[Job]:
    async with app.state.ctx.sessionmaker() as s:
        found = await s.scalars(select(Job).where(Job.kind == kind).order_by(Job.created_at))
        return list(found)


async def test_concurrent_status_callbacks_move_each_call_forward_once(
    client, setup, twilio_standin, app
):
    await _hook(app, setup)
    sids = [await _placed(client, setup) for _ in range(3)]
    cbs = []
    for sid in sids:
        for status in ("initiated", "ringing", "in-progress"):
            cbs.append(twilio_standin.callback(sid, "status", CallStatus=status))
        cbs.append(twilio_standin.callback(sid, "status", CallStatus="completed", CallDuration=41))
    random.Random(5).shuffle(cbs)  # late ones among them: each is applied or ignored, alone

    responses = await asyncio.gather(*(twilio_standin.deliver(client, cb) for cb in cbs))

    assert {r.status_code for r in responses} == {204}
    for sid in sids:
        call = await get_call(client, setup, sid)
        assert (call["status"], call["seconds"]) == ("completed", 41)
    prices = [j.payload["call_id"] for j in await _jobs(app, "call.price")]
    assert sorted(prices) == sorted(str(c.id) for c in await calls(app))
    events: dict[str, list[str]] = {sid: [] for sid in sids}
    for job in await _jobs(app, "webhook.call_event"):
        call = json.loads(job.payload["body"])["call"]
        events[call["callSid"]].append(call["status"])
    order = ["initiated", "ringing", "in-progress", "completed"]
    for statuses in events.values():
        # One event per change, never backwards, ending with the final status.
        assert statuses == sorted(statuses, key=order.index) and len(set(statuses)) == len(statuses)
        assert statuses[-1] == "completed"


async def test_status_callbacks_arriving_together_share_one_transaction(
    client, setup, twilio_standin, app, monkeypatch
):
    await _hook(app, setup)
    sids = [await _placed(client, setup) for _ in range(4)]
    rows = {c.call_sid: c.id for c in await calls(app)}
    bad = sids[1]
    real = callbacks.status_update

    def failing_for_bad(**kwargs: Any) -> callbacks.StatusUpdate:
        if kwargs["sid"] == bad:
            raise RuntimeError("this callback cannot be applied")
        return real(**kwargs)

    monkeypatch.setattr(callbacks, "status_update", failing_for_bad)
    ingest = callbacks.status_ingest(app.state.ctx.sessionmaker)
    with counted_commits(app) as commits:
        # Applied from one task each, as requests are: all are waiting before the first write.
        results = await asyncio.gather(
            *(
                ingest.apply(rows[sid], {"CallSid": sid, "CallStatus": "ringing"})
                for sid in [*sids, sids[0]]  # the last one repeats the first: no change
            ),
            return_exceptions=True,
        )

    assert results[0] is True and results[2] is True and results[3] is True
    assert results[4] is False
    assert isinstance(results[1], RuntimeError)
    # The batch failed on the bad callback and was written again one callback at a time.
    assert len(commits) == 4
    statuses = {c.call_sid: c.status for c in await calls(app)}
    assert statuses == {sids[0]: "ringing", bad: "queued", sids[2]: "ringing", sids[3]: "ringing"}
    assert len(await _jobs(app, "webhook.call_event")) == 3


async def test_one_batch_writes_many_callbacks_in_one_commit(client, setup, twilio_standin, app):
    sids = [await _placed(client, setup) for _ in range(5)]
    rows = {c.call_sid: c.id for c in await calls(app)}
    ingest = callbacks.status_ingest(app.state.ctx.sessionmaker)
    with counted_commits(app) as commits:
        results = await asyncio.gather(
            *(
                ingest.apply(
                    rows[sid], {"CallSid": sid, "CallStatus": status, "SequenceNumber": str(n)}
                )
                for sid in sids
                for n, status in enumerate(("ringing", "in-progress"))
            )
        )

    assert results == [True] * 10 and len(commits) == 1
    assert {c.status for c in await calls(app)} == {"in-progress"}


async def test_a_callback_that_changes_nothing_reads_no_project_and_writes_nothing(
    client, setup, twilio_standin, app
):
    await _hook(app, setup)
    sid = await _placed(client, setup)
    ringing = twilio_standin.callback(sid, "status", CallStatus="ringing")
    assert (await twilio_standin.deliver(client, ringing)).status_code == 204
    statements: list[str] = []
    engine = app.state.ctx.engine.sync_engine

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        # Twilio retries the callback: the same SequenceNumber again.
        assert (await twilio_standin.deliver(client, ringing)).status_code == 204
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert any("FROM calls" in s for s in statements)
    assert not [
        s for s in statements if "projects" in s or s.lstrip().startswith(("UPDATE", "INSERT"))
    ]
    assert len(await _jobs(app, "webhook.call_event")) == 1


def test_the_api_schema_lists_every_call_status() -> None:
    # The response schema spells the statuses out as a Literal (an inline enum in the OpenAPI
    # document); the code names them through CallStatus. One list, in the same order.
    assert get_args(call_schemas.CallStatus) == tuple(CallStatus)
    assert all(type(status.value) is str for status in CallStatus)
