"""Call history: every filter, newest first, keyset pages that never skip or repeat a call."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import Call
from tests.factories import api_key_for, assert_error, verified_account

NUMBERS = ["+14155550101", "+14155550102", "+14155550103"]
FROM = ["+14155550100", "+14155550199"]
STATUSES = ["completed", "busy", "no-answer", "failed", "in-progress"]
BASE = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
async def seeded(client, mailbox, app) -> dict[str, Any]:
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    r = await client.post("/project/create-project", json={"name": "H"}, headers=key)
    project = r.json()["data"]["id"]
    r = await client.post("/project/create-project", json={"name": "Other"}, headers=key)
    other = r.json()["data"]["id"]
    rnd = random.Random(7)
    rows = []
    for i in range(300):
        # Several calls share a timestamp: the id must break ties.
        start = BASE + timedelta(hours=(i // 3) * 5)
        status = rnd.choice(STATUSES)
        rows.append(
            Call(
                call_sid="CA" + uuid.uuid4().hex,
                user_id=uuid.UUID(acct.user_id),
                project_id=uuid.UUID(other if i % 50 == 0 else project),
                to_number=rnd.choice(NUMBERS),
                from_number=rnd.choice(FROM),
                status=status,
                created_at=start,
                updated_at=start,
                ended_at=None if status == "in-progress" else start + timedelta(minutes=30),
            )
        )
    async with app.state.ctx.sessionmaker() as s:
        s.add_all(rows)
        await s.commit()
    mine = [c for c in rows if str(c.project_id) == project]
    return {"key": key, "project": project, "calls": mine}


async def walk(client, seeded, page_size: int, params: dict[str, str]) -> list[str]:
    sids: list[str] = []
    token = None
    for _ in range(1000):
        body: dict[str, Any] = {"projectId": seeded["project"], "pageSize": page_size}
        if token:
            body["pageToken"] = token
        r = await client.post(
            "/call/get-call-history", json=body, params=params, headers=seeded["key"]
        )
        assert r.status_code == 200, r.text
        data = r.json()
        assert len(data["calls"]) <= page_size
        sids += [c["callSid"] for c in data["calls"]]
        token = data["nextPageToken"]
        if token is None:
            return sids
    raise AssertionError("pagination did not end")


def expected(calls: list[Call], keep) -> list[str]:
    chosen = sorted((c for c in calls if keep(c)), key=lambda c: (c.created_at, c.id), reverse=True)
    return [c.call_sid for c in chosen]  # type: ignore[misc]


def day(d: str) -> datetime:
    return datetime.fromisoformat(d).replace(tzinfo=UTC)


FILTERS: list[tuple[dict[str, str], Any]] = [
    ({}, lambda c: True),
    ({"to": NUMBERS[0]}, lambda c: c.to_number == NUMBERS[0]),
    ({"from": FROM[1]}, lambda c: c.from_number == FROM[1]),
    ({"status": "busy"}, lambda c: c.status == "busy"),
    ({"startTime": "2025-03-05"}, lambda c: c.created_at.date().isoformat() == "2025-03-05"),
    ({"startTimeBefore": "2025-03-10"}, lambda c: c.created_at < day("2025-03-11")),
    ({"startTimeAfter": "2025-03-15"}, lambda c: c.created_at >= day("2025-03-15")),
    (
        {"endTime": "2025-03-07"},
        lambda c: c.ended_at is not None and c.ended_at.date().isoformat() == "2025-03-07",
    ),
    (
        {"endTimeBefore": "2025-03-04"},
        lambda c: c.ended_at is not None and c.ended_at < day("2025-03-05"),
    ),
    (
        {"endTimeAfter": "2025-03-18"},
        lambda c: c.ended_at is not None and c.ended_at >= day("2025-03-18"),
    ),
    (
        {"to": NUMBERS[1], "status": "completed", "startTimeAfter": "2025-03-03"},
        lambda c: (
            c.to_number == NUMBERS[1]
            and c.status == "completed"
            and c.created_at >= day("2025-03-03")
        ),
    ),
]


@pytest.mark.parametrize("params,keep", FILTERS)
async def test_every_call_exactly_once_newest_first(client, seeded, params, keep):
    want = expected(seeded["calls"], keep)
    assert want or params == {}, "the seed should give every filter something to find"
    got = await walk(client, seeded, 17, params)
    assert got == want


async def test_default_page_and_shape(client, seeded):
    r = await client.post(
        "/call/get-call-history", json={"projectId": seeded["project"]}, headers=seeded["key"]
    )
    body = r.json()
    assert body["message"] == "successfully fetched call history." and body["status"] == "success"
    assert len(body["calls"]) == 20 and body["nextPageToken"]
    assert set(body["calls"][0]) >= {"seconds", "cost", "status", "from", "to", "date", "callSid"}


@pytest.mark.parametrize("size", [0, 101, "x"])
async def test_bad_page_size(client, seeded, size):
    r = await client.post(
        "/call/get-call-history",
        json={"projectId": seeded["project"], "pageSize": size},
        headers=seeded["key"],
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    "params",
    [
        {"status": "exploded"},
        {"startTime": "2009-0-06"},
        {"endTimeAfter": "yesterday"},
        {"to": "123"},
    ],
)
async def test_bad_filters(client, seeded, params):
    r = await client.post(
        "/call/get-call-history",
        json={"projectId": seeded["project"]},
        params=params,
        headers=seeded["key"],
    )
    assert r.status_code == 400, r.text


async def test_tampered_or_foreign_page_token_is_400(client, seeded, mailbox):
    r = await client.post(
        "/call/get-call-history",
        json={"projectId": seeded["project"], "pageSize": 5},
        headers=seeded["key"],
    )
    token = r.json()["nextPageToken"]
    body_part, _mac = token.split(".")
    for bad in (
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "garbage",
        body_part + ".",
        "a.b.c",
    ):
        r = await client.post(
            "/call/get-call-history",
            json={"projectId": seeded["project"], "pageToken": bad},
            headers=seeded["key"],
        )
        assert_error(r, 400, "INVALID_PAGE_TOKEN")
    # A token is bound to its filters.
    r = await client.post(
        "/call/get-call-history",
        json={"projectId": seeded["project"], "pageToken": token},
        params={"status": "busy"},
        headers=seeded["key"],
    )
    assert_error(r, 400, "INVALID_PAGE_TOKEN")


async def test_another_users_project_is_404(client, seeded, mailbox):
    other = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, other)}
    r = await client.post(
        "/call/get-call-history", json={"projectId": seeded["project"]}, headers=key
    )
    assert_error(r, 404, "PROJECT_NOT_FOUND")


async def test_end_filters_find_calls_that_ended_a_little_before_they_started(client, seeded, app):
    # Twilio's Timestamp (whole seconds, Twilio's clock) can put a short call's end a moment
    # before the created_at this server gave it: the end filters still find it, though the
    # query also bounds created_at by the end filter (so it scans only the right calls).
    project = uuid.UUID(seeded["project"])
    user = seeded["calls"][0].user_id
    skewed = []
    for created, ended in (
        ("2025-04-10T23:59:50", "2025-04-10T23:59:41"),
        ("2025-04-11T00:00:04", "2025-04-10T23:59:59"),
    ):
        skewed.append(
            Call(
                call_sid="CA" + uuid.uuid4().hex,
                user_id=user,
                project_id=project,
                to_number=NUMBERS[2],
                from_number=FROM[0],
                status="failed",
                created_at=datetime.fromisoformat(created).replace(tzinfo=UTC),
                ended_at=datetime.fromisoformat(ended).replace(tzinfo=UTC),
            )
        )
    async with app.state.ctx.sessionmaker() as s:
        s.add_all(skewed)
        await s.commit()
    everything = [*seeded["calls"], *skewed]

    for params, keep in (
        (
            {"endTime": "2025-04-10"},
            lambda c: c.ended_at and c.ended_at.date().isoformat() == "2025-04-10",
        ),
        ({"endTimeBefore": "2025-04-10"}, lambda c: c.ended_at and c.ended_at < day("2025-04-11")),
    ):
        want = expected(everything, keep)
        assert {c.call_sid for c in skewed} <= set(want)
        assert await walk(client, seeded, 7, params) == want
