"""Batch calls (docs/api/batch-calls.md): upload and validation, dialing through the Twilio
stand-in, pace, the live-call cap, cancel, and what happens when Twilio fails or the server dies."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select

from app.batch.dialer import AGAIN, BUSY, DONE, BatchDialer, Claim, MemoryPacer
from app.batch.lifecycle import RowState
from app.batch.schemas import BatchOut, BatchRowOut
from app.models import Agent, Batch, BatchRow, BatchStatus, Call, Job, Project
from tests.factories import (
    CallingAgent,
    api_key_for,
    assert_error,
    calling_agent,
    verified_account,
)
from tests.standins.receiver import running_receiver

FROM = "+14155550100"


def numbers(n: int, start: int = 1000) -> list[str]:
    return [f"+1415555{start + i:04d}" for i in range(n)]


@pytest.fixture
def settings_overrides(request, twilio_standin) -> dict[str, Any]:
    return {
        **twilio_standin.settings_overrides(),
        "job_poll_interval_seconds": 0.05,
        "job_retry_base_seconds": 0.01,
        "batch_calls_per_second": 50.0,
        "batch_max_concurrent_calls": 100,
        "batch_slice_seconds": 1.0,
        "batch_retry_base_seconds": 0.2,
        "twilio_timeout_seconds": 2.0,
        **getattr(request, "param", {}),
    }


@pytest.fixture
async def setup(client, mailbox, twilio_standin) -> CallingAgent:
    agent = {
        "name": "Ann",
        "systemInstruction": "Call {{name}} about {{topic}}.",
        "firstMessage": "Hi {{name}}!",
    }
    return await calling_agent(
        client, mailbox, twilio_standin, number=FROM, agent=agent, project_name="Leads"
    )


async def upload(client, setup, content: bytes, filename: str = "leads.csv", **fields: Any) -> Any:
    data = {"projectId": setup.project, "agentId": setup.agent, **fields}
    return await client.post(
        "/call/batch-call",
        data=data,
        files={"file": (filename, content, "text/csv")},
        headers=setup.key,
    )


def csv_of(rows: list[list[str]], *, sep: str = ",", bom: bool = False) -> bytes:
    text = "\n".join(sep.join(r) for r in rows) + "\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def xlsx_of(rows: list[list[Any]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for r in rows:
        sheet.append(r)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def batch_rows(app, batch_id: str) -> list[BatchRow]:
    async with app.state.ctx.sessionmaker() as s:
        found = await s.scalars(
            select(BatchRow).where(BatchRow.batch_id == uuid.UUID(batch_id)).order_by(BatchRow.row)
        )
        return list(found)


async def finished(client, setup, batch_id: str, within: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        r = await client.get(f"/call/batch-call/{batch_id}", headers=setup.key)
        body = r.json()
        if body["batch"]["status"] != "running":
            return dict(body)
        if time.monotonic() > deadline:
            raise AssertionError(body["batch"])
        await asyncio.sleep(0.05)


def dialed(twilio_standin) -> Counter[str]:
    """How many calls Twilio placed to each number (refused create requests place none)."""
    return Counter(twilio_standin.call(sid)["to"] for sid in twilio_standin.call_sids)


# -- upload and validation ------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_every_row_is_validated_and_the_answer_lists_rejections(app, client, setup):
    content = csv_of(
        [
            ["number", "name", "topic", "dynamicVariables"],
            ["+14155551000", "Ann", "the offer", ""],
            ["(415) 555-1001", "Bob", "x", ""],  # no country code
            ["+14155551002", "", "the offer", '{"name": "Cy"}'],
            ["+14155551003", "Di", "", ""],  # topic missing
            ["+14155551004", "Ed", "y", "{not json"],
            ["", "", "", ""],  # blank lines are skipped
            ["+14155551005", "Flo", "z", '{"topic": 7, "vip": true}'],
        ],
        sep=";",
        bom=True,
    )
    r = await upload(client, setup, content)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "batch created." and body["status"] == "success"
    batch = body["batch"]
    assert (batch["status"], batch["total"], batch["accepted"]) == ("running", 6, 3)
    assert batch["rejectedCount"] == 3
    assert batch["rejected"] == [
        {"row": 3, "number": "(415) 555-1001",
         "error": "number is not a valid phone number in E.164 form"},
        {"row": 5, "number": "+14155551003", "error": "missing variables: topic"},
        {"row": 6, "number": "+14155551004", "error": "dynamicVariables is not valid JSON"},
    ]  # fmt: skip
    rows = await batch_rows(app, batch["id"])
    assert [(r.row, r.state) for r in rows] == [
        (2, "queued"), (3, "rejected"), (4, "queued"), (5, "rejected"), (6, "rejected"),
        (8, "queued"),
    ]  # fmt: skip
    assert rows[2].variables == {"topic": "the offer", "name": "Cy"}
    assert rows[5].variables == {"name": "Flo", "topic": "7", "vip": "true"}


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_xlsx_first_sheet_is_read(app, client, setup):
    content = xlsx_of(
        [
            ["Number", "name", "topic"],
            [14155551000, "Ann", "a"],  # a number typed as a number: no country sign
            ["+14155551001", "Bob", "b"],
        ]
    )
    r = await upload(client, setup, content, filename="leads.xlsx")
    assert r.status_code == 200, r.text
    batch = r.json()["batch"]
    assert (batch["total"], batch["accepted"]) == (2, 1)
    rows = await batch_rows(app, batch["id"])
    assert rows[1].number == "+14155551001" and rows[1].variables == {"name": "Bob", "topic": "b"}


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "EMPTY_BATCH_FILE"),
        (b"name,topic\nAnn,x\n", "MISSING_NUMBER_COLUMN"),
        (b"number,number\n+14155551000,+14155551001\n", "DUPLICATE_COLUMN"),
        (b"number\n", "EMPTY_BATCH_FILE"),
        ("number,name\n+14155551000,Jos\xe9\n".encode("latin-1"), "INVALID_ENCODING"),
        (b"PK\x03\x04 not really a workbook", "INVALID_BATCH_FILE"),
    ],
)
async def test_unreadable_files_are_400_and_store_nothing(app, client, setup, content, code):
    r = await upload(client, setup, content)
    assert_error(r, 400, code)
    async with app.state.ctx.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 0
        assert await s.scalar(select(func.count()).select_from(BatchRow)) == 0


VALID_CSV = b"number,name,topic\n+14155551000,Ann,x\n"


@pytest.mark.parametrize(
    ("filename", "content", "content_type", "code"),
    [
        ("calls.txt", VALID_CSV, "text/plain", "UNSUPPORTED_FILE_TYPE"),
        ("calls", VALID_CSV, "text/csv", "UNSUPPORTED_FILE_TYPE"),
        ("calls.csv.exe", VALID_CSV, "application/octet-stream", "UNSUPPORTED_FILE_TYPE"),
        ("leads.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64,
         "application/vnd.ms-excel", "UNSUPPORTED_FILE_TYPE"),
        ("leads.xlsx", VALID_CSV, "text/csv", "INVALID_BATCH_FILE"),
        ("leads.xlsx", b"", "application/octet-stream", "EMPTY_BATCH_FILE"),
        ("leads.csv", xlsx_of([["number"], ["+14155551000"]]), "text/csv", "INVALID_BATCH_FILE"),
        ("leads.csv", VALID_CSV.decode().encode("utf-16"), "text/csv", "INVALID_BATCH_FILE"),
    ],
)  # fmt: skip
async def test_only_csv_and_xlsx_files_are_taken(
    app, client, setup, filename, content, content_type, code
):
    r = await client.post(
        "/call/batch-call",
        data={"projectId": setup.project, "agentId": setup.agent},
        files={"file": (filename, content, content_type)},
        headers=setup.key,
    )
    body = assert_error(r, 400, code)
    if code == "UNSUPPORTED_FILE_TYPE":
        assert ".csv or .xlsx" in body["message"]
    async with app.state.ctx.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Batch)) == 0
        assert await s.scalar(select(func.count()).select_from(BatchRow)) == 0


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [
        ("LEADS.CSV", "application/vnd.ms-excel"),  # what Windows browsers send for .csv
        ("C:\\fakepath\\leads.csv", "application/octet-stream"),
    ],
)
@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_a_csv_is_taken_whatever_content_type_the_client_sends(
    client, setup, filename, content_type
):
    r = await client.post(
        "/call/batch-call",
        data={"projectId": setup.project, "agentId": setup.agent},
        files={"file": (filename, VALID_CSV, content_type)},
        headers=setup.key,
    )
    assert r.status_code == 200, r.text
    assert r.json()["batch"]["accepted"] == 1


async def test_more_than_100000_rows_is_400_and_stores_nothing(app, client, setup):
    lines = ["number,name,topic"] + [f"+1415{i:07d},N,T" for i in range(100_001)]
    r = await upload(client, setup, ("\n".join(lines) + "\n").encode())
    assert_error(r, 400, "TOO_MANY_ROWS")
    async with app.state.ctx.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(BatchRow)) == 0


async def test_a_file_over_10_mb_is_413(client, setup):
    content = b"number,name,topic\n" + b"+14155551000,N,T\n" * 700_000
    assert len(content) > 10 * 1024 * 1024
    r = await upload(client, setup, content)
    assert_error(r, 413, "FILE_TOO_LARGE")


async def test_missing_fields_and_foreign_ids(client, setup, mailbox):
    r = await client.post("/call/batch-call", data={"projectId": setup.project}, headers=setup.key)
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"
    assert {e["field"] for e in r.json()["errors"]} == {"agentId", "file"}
    r = await client.post("/call/batch-call", json={"projectId": "x"}, headers=setup.key)
    assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR"
    other = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, other)}
    content = csv_of([["number", "name", "topic"], ["+14155551000", "A", "B"]])
    r = await client.post(
        "/call/batch-call",
        data={"projectId": setup.project, "agentId": setup.agent},
        files={"file": ("l.csv", content, "text/csv")},
        headers=key,
    )
    assert_error(r, 404, "PROJECT_NOT_FOUND")


async def test_an_agent_without_a_number_is_400(client, setup):
    r = await client.post(
        "/agent/create-agent",
        json={"name": "N", "systemInstruction": "x", "projectId": setup.project},
        headers=setup.key,
    )
    content = csv_of([["number"], ["+14155551000"]])
    r = await upload(client, setup, content, agentId=r.json()["data"]["id"])
    assert_error(r, 400, "AGENT_HAS_NO_NUMBER")


# -- dialing ----------------------------------------------------------------------------------


async def test_every_accepted_row_is_dialed_exactly_once(app, client, setup, twilio_standin):
    targets = numbers(30)
    rows = [["number", "name", "topic"]] + [
        [n, f"N{i}", "the offer"] for i, n in enumerate(targets)
    ]
    rows.append(["bad", "x", "y"])
    r = await upload(client, setup, csv_of(rows))
    batch_id = r.json()["batch"]["id"]

    body = await finished(client, setup, batch_id)

    assert body["batch"]["status"] == "completed" and body["batch"]["finished_at"]
    assert body["batch"]["counts"] == {
        "queued": 0, "dialing": 0, "dialed": 30, "failed": 0, "canceled": 0, "rejected": 1,
    }  # fmt: skip
    assert dialed(twilio_standin) == Counter(targets)
    sids = {row["callSid"] for row in body["rows"] if row["state"] == "dialed"}
    assert len(sids) == 30
    async with app.state.ctx.sessionmaker() as s:
        calls = list(await s.scalars(select(Call).where(Call.batch_id == uuid.UUID(batch_id))))
    assert {c.call_sid for c in calls} == sids
    # Each dialed call is checked at Twilio once it must have ended (a lost final callback).
    async with app.state.ctx.sessionmaker() as s:
        checks = list(await s.scalars(select(Job).where(Job.kind == "call.check")))
    assert sorted(j.payload["call_id"] for j in checks) == sorted(str(c.id) for c in calls)
    first = next(c for c in calls if c.to_number == targets[0])
    assert (
        first.system_instruction == "Call N0 about the offer." and first.first_message == "Hi N0!"
    )
    # The history shows them, with the batch id.
    r = await client.post("/call", json={"sid": first.call_sid}, headers=setup.key)
    assert r.json()["batchId"] == batch_id


@pytest.mark.parametrize("settings_overrides", [{"batch_calls_per_second": 5.0}], indirect=True)
async def test_dialing_keeps_the_pace(client, setup, twilio_standin):
    rows = [["number", "name", "topic"]] + [[n, "A", "B"] for n in numbers(8)]
    started = time.monotonic()
    r = await upload(client, setup, csv_of(rows))
    await finished(client, setup, r.json()["batch"]["id"])
    elapsed = time.monotonic() - started
    # 8 calls at 5/s: the first at once, the last 7 x 0.2 s later.
    assert elapsed >= 1.3
    creates = twilio_standin.requests_to("/Calls.json", "POST")
    assert len(creates) == 8


@pytest.mark.parametrize(
    "settings_overrides",
    [{"batch_max_concurrent_calls": 1, "run_jobs_in_process": False}],
    indirect=True,
)
async def test_a_long_call_still_counts_as_live(app, client, setup):
    # An agent may talk for up to four hours: a call placed 3 hours ago, still in progress,
    # holds its place under the cap (it was let go after two hours).
    async with app.state.ctx.sessionmaker() as s:
        agent = await s.get(Agent, uuid.UUID(setup.agent))
        assert agent is not None
        agent.max_call_duration_seconds = 4 * 3600
        project = await s.get(Project, agent.project_id)
        assert project is not None
        s.add(
            Call(
                user_id=project.user_id,
                project_id=agent.project_id,
                agent_id=agent.id,
                direction="outbound",
                to_number="+14155550999",
                from_number=FROM,
                status="in-progress",
                call_sid="CA" + "1" * 32,
                created_at=datetime.now(UTC) - timedelta(hours=3),
            )
        )
        await s.commit()
    rows = [["number", "name", "topic"], [numbers(1)[0], "A", "B"]]
    batch_id = (await upload(client, setup, csv_of(rows))).json()["batch"]["id"]
    dialer = BatchDialer(app.state.ctx, MemoryPacer())

    assert await dialer.claim(uuid.UUID(batch_id)) == BUSY


@pytest.mark.parametrize("settings_overrides", [{"batch_max_concurrent_calls": 2}], indirect=True)
async def test_no_more_than_the_cap_are_live_at_once(app, client, setup, twilio_standin):
    rows = [["number", "name", "topic"]] + [[n, "A", "B"] for n in numbers(5)]
    r = await upload(client, setup, csv_of(rows))
    batch_id = r.json()["batch"]["id"]
    await asyncio.sleep(1.0)
    assert len(twilio_standin.created_calls) == 2  # the others wait for a live call to end
    for _ in range(3):
        sids = list(twilio_standin.call_sids)
        for sid in sids:
            if twilio_standin.call(sid)["status"] not in ("completed",):
                await twilio_standin.deliver(
                    client,
                    twilio_standin.callback(
                        sid, "status", CallStatus="completed", CallDuration="3"
                    ),
                )
        await asyncio.sleep(0.6)
    body = await finished(client, setup, batch_id)
    assert body["batch"]["counts"]["dialed"] == 5
    assert dialed(twilio_standin) == Counter(numbers(5))


async def test_a_number_twilio_refuses_fails_and_the_rest_go_on(client, setup, twilio_standin):
    targets = numbers(3)
    twilio_standin.make_undialable(targets[1], 21217)
    rows = [["number", "name", "topic"]] + [[n, "A", "B"] for n in targets]
    r = await upload(client, setup, csv_of(rows))
    body = await finished(client, setup, r.json()["batch"]["id"])
    states = {row["number"]: (row["state"], row["error"]) for row in body["rows"]}
    assert states[targets[0]][0] == states[targets[2]][0] == "dialed"
    assert states[targets[1]][0] == "failed" and states[targets[1]][1]


async def test_twilio_down_is_retried_without_dialing_twice(client, setup, twilio_standin):
    targets = numbers(2)
    twilio_standin.fail_next(1, status=503)  # the first create: refused before any call exists
    rows = [["number", "name", "topic"]] + [[n, "A", "B"] for n in targets]
    r = await upload(client, setup, csv_of(rows))
    body = await finished(client, setup, r.json()["batch"]["id"], within=30)
    assert body["batch"]["counts"]["dialed"] == 2
    assert dialed(twilio_standin) == Counter(targets)


@pytest.mark.parametrize("settings_overrides", [{"twilio_timeout_seconds": 0.3}], indirect=True)
async def test_a_call_placed_despite_a_timeout_is_adopted_not_redialed(
    app, client, setup, twilio_standin
):
    # Twilio takes longer than our timeout but does place the call: the dialer must find it.
    twilio_standin.hang_next(1, seconds=0.8)
    targets = numbers(2)
    rows = [["number", "name", "topic"]] + [[n, "A", "B"] for n in targets]
    r = await upload(client, setup, csv_of(rows))
    body = await finished(client, setup, r.json()["batch"]["id"], within=30)
    assert body["batch"]["counts"]["dialed"] == 2
    assert dialed(twilio_standin) == Counter(targets)
    sids = [row["callSid"] for row in body["rows"]]
    assert set(sids) == set(twilio_standin.call_sids)
    # The adopted call is checked at Twilio later too, like the one dialed normally.
    async with app.state.ctx.sessionmaker() as s:
        checks = list(await s.scalars(select(Job).where(Job.kind == "call.check")))
        calls = list(await s.scalars(select(Call)))
    assert sorted(j.payload["call_id"] for j in checks) == sorted(str(c.id) for c in calls)


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_a_claim_whose_call_sid_came_by_callback_is_adopted_after_a_crash(
    app, client, setup, twilio_standin
):
    # The server asked Twilio, Twilio's `initiated` callback stored the Call SID, and the server
    # died before storing it itself. Twilio lists that call: it is this row's, not another's.
    rows = [["number", "name", "topic"], [numbers(1)[0], "A", "B"]]
    batch_id = uuid.UUID((await upload(client, setup, csv_of(rows))).json()["batch"]["id"])
    ctx = app.state.ctx
    dialer = BatchDialer(ctx, MemoryPacer())
    claim = await dialer.claim(batch_id)
    assert isinstance(claim, Claim)
    placed = await dialer.place(claim)  # Twilio places it; the server dies before storing it
    cb = twilio_standin.callback(placed.sid, "status", CallStatus="initiated")
    assert (await twilio_standin.deliver(client, cb)).status_code == 204
    async with ctx.sessionmaker() as s, s.begin():
        row = await s.get(BatchRow, claim.row_id)
        assert row is not None and row.state == "dialing"
        row.claimed_at -= dialer.stale_after  # the restarted server's view: a stale claim

    await dialer.reconcile_stale(batch_id)
    assert await dialer.claim(batch_id) == DONE

    assert twilio_standin.call_sids == [placed.sid]  # dialed once
    (row,) = await batch_rows(app, str(batch_id))
    assert (row.state, row.call_sid, row.attempts) == ("dialed", placed.sid, 1)


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_a_requeued_row_whose_first_call_shows_up_is_adopted_not_redialed(
    app, client, setup, twilio_standin
):
    # Twilio listed no call for the claim, so the row was queued again; then the first
    # attempt's callback arrives after all. The next claim adopts that call instead of dialing.
    rows = [["number", "name", "topic"], [numbers(1)[0], "A", "B"]]
    batch_id = uuid.UUID((await upload(client, setup, csv_of(rows))).json()["batch"]["id"])
    ctx = app.state.ctx
    dialer = BatchDialer(ctx, MemoryPacer())
    claim = await dialer.claim(batch_id)
    assert isinstance(claim, Claim)
    async with ctx.sessionmaker() as s, s.begin():
        row = await s.get(BatchRow, claim.row_id)
        assert row is not None
        row.claimed_at -= dialer.stale_after
    await dialer.reconcile_stale(batch_id)
    (row,) = await batch_rows(app, str(batch_id))
    assert row.state == "queued"
    sid = "CA" + "7" * 32
    async with ctx.sessionmaker() as s, s.begin():
        call = await s.get(Call, claim.call_id)
        assert call is not None
        call.call_sid = sid  # what the late callback stores
        (await s.get(BatchRow, claim.row_id)).next_attempt_at = None

    assert await dialer.claim(batch_id) == AGAIN
    assert await dialer.claim(batch_id) == DONE
    assert twilio_standin.created_calls == []
    (row,) = await batch_rows(app, str(batch_id))
    assert (row.state, row.call_sid) == ("dialed", sid)


async def test_rows_of_an_agent_that_leaves_voicemail_fill_its_message_and_wait_for_the_beep(
    app, client, setup, twilio_standin
):
    r = await client.put(
        "/agent",
        json={"projectId": setup.project, "agentId": setup.agent,
              "voicemailMessage": "Hi {{name}}, call us back on {{callback}}."},
        headers=setup.key,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    content = csv_of(
        [
            ["number", "name", "topic", "callback"],
            ["+14155551000", "Ann", "a", "555-0100"],
            ["+14155551001", "Bob", "b", ""],  # the message could not be said
        ]
    )
    r = await upload(client, setup, content)
    assert r.json()["batch"]["rejected"] == [
        {"row": 3, "number": "+14155551001", "error": "missing variables: callback"}
    ]
    await finished(client, setup, r.json()["batch"]["id"])
    [created] = twilio_standin.created_calls
    assert created["To"] == ["+14155551000"]
    assert created["MachineDetection"] == ["DetectMessageEnd"]


# -- reading and canceling ------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_progress_pages_through_rows_and_cancel_stops_the_rest(
    app, client, setup, mailbox, twilio_standin
):
    rows = [["number", "name", "topic"]] + [[n, "A", "B"] for n in numbers(7)]
    r = await upload(client, setup, csv_of(rows))
    batch_id = r.json()["batch"]["id"]
    seen = []
    token = None
    while True:
        params = {"pageSize": 3, **({"pageToken": token} if token else {})}
        r = await client.get(f"/call/batch-call/{batch_id}", params=params, headers=setup.key)
        body = r.json()
        seen += [row["row"] for row in body["rows"]]
        token = body["nextPageToken"]
        if token is None:
            break
    assert seen == list(range(2, 9))
    assert body["batch"]["counts"]["queued"] == 7

    other = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, other)}
    for method, path in (("GET", ""), ("POST", "/cancel")):
        r = await client.request(method, f"/call/batch-call/{batch_id}{path}", headers=key)
        missing = await client.request(
            method, f"/call/batch-call/{uuid.uuid4()}{path}", headers=key
        )
        assert r.status_code == missing.status_code == 404 and r.json() == missing.json()

    r = await client.post(f"/call/batch-call/{batch_id}/cancel", headers=setup.key)
    assert r.status_code == 200
    assert r.json()["batch"]["status"] == "canceled"
    assert r.json()["batch"]["counts"]["canceled"] == 7
    r = await client.post(f"/call/batch-call/{batch_id}/cancel", headers=setup.key)
    assert r.status_code == 200  # canceling twice is harmless
    assert twilio_standin.created_calls == []
    r = await client.get(
        f"/call/batch-call/{batch_id}", params={"pageToken": "x"}, headers=setup.key
    )
    assert_error(r, 400, "INVALID_PAGE_TOKEN")


async def test_a_completed_batch_cannot_be_canceled(client, setup, twilio_standin):
    r = await upload(
        client, setup, csv_of([["number", "name", "topic"], [numbers(1)[0], "A", "B"]])
    )
    batch_id = r.json()["batch"]["id"]
    await finished(client, setup, batch_id)
    r = await client.post(f"/call/batch-call/{batch_id}/cancel", headers=setup.key)
    assert_error(r, 409, "BATCH_FINISHED")


@pytest.mark.parametrize(
    "settings_overrides",
    [{"webhook_allow_private_hosts": True, "webhook_retry_base_seconds": 0.02}],
    indirect=True,
)
async def test_a_row_twilio_refuses_tells_the_webhook_like_a_refused_single_call(
    client, setup, twilio_standin
):
    single, row = numbers(2)
    twilio_standin.make_undialable(single, 21217)
    twilio_standin.make_undialable(row, 21217)
    with running_receiver() as receiver:
        r = await client.post(
            "/project/call-status/add-webhookurl",
            json={"projectId": setup.project, "webhookURL": receiver.url},
            headers=setup.key,
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/call/makeCall",
            json={
                "number": single,
                "projectId": setup.project,
                "agentId": setup.agent,
                "dynamicVariables": {"name": "A", "topic": "B"},
            },
            headers=setup.key,
        )
        assert r.status_code == 400 and r.json()["code"] == "TWILIO_REJECTED"
        r = await upload(client, setup, csv_of([["number", "name", "topic"], [row, "A", "B"]]))
        batch_id = r.json()["batch"]["id"]
        body = await finished(client, setup, batch_id)
        assert body["batch"]["counts"]["failed"] == 1
        deliveries = await receiver.wait_for(2)

    events = {json.loads(d.body)["call"]["to"]: json.loads(d.body) for d in deliveries}
    assert set(events) == {single, row}
    for event in events.values():
        call = event["call"]
        assert event["event"] == "call.status"
        assert (call["status"], call["endedReason"], call["callSid"]) == (
            "failed",
            "twilio-rejected",
            None,
        )
    assert events[single]["call"]["batchId"] is None
    assert events[row]["call"]["batchId"] == batch_id


def test_the_api_schema_lists_every_row_state() -> None:
    # BatchRowOut.state is a Literal (an inline enum in the OpenAPI document); the code names
    # the states through RowState. One list, in the same order.
    assert get_args(BatchRowOut.model_fields["state"].annotation) == tuple(RowState)


def test_the_api_schema_lists_every_batch_status() -> None:
    # The same for the batch's own status: the code's BatchStatus, the API's Literal.
    assert get_args(BatchOut.model_fields["status"].annotation) == tuple(BatchStatus)
