"""Webhook deliveries (listed, redelivered) and webhook secret rotation, against a real receiver."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import select, update

from app.call.callbacks import status_ingest
from app.integrations.webhooks import sender as webhooks
from app.integrations.webhooks.sender import verify_signature
from app.jobs.queue import enqueue_many
from app.models import Call, Job, Project, WebhookDelivery
from app.models.webhook_delivery import DeliveryStatus
from app.project.deliveries import purge_expired
from app.project.schemas import DeliveryStatus as ShownStatus
from tests.factories import (
    api_key_for,
    assert_error,
    assert_validation_error,
    make_project,
    parse_iso_ms,
    verified_account,
)
from tests.standins.receiver import Delivery
from tests.test_migrations import _config as migration_config
from tests.test_migrations import _sync_url as sync_url
from tests.test_migrations import fresh_database  # noqa: F401  (a fixture)
from tests.test_webhooks import CALL, FAST, emit, readme_verify

DELIVERY_KEYS = {
    "id",
    "eventId",
    "event",
    "callSid",
    "status",
    "attempts",
    "maxAttempts",
    "lastStatusCode",
    "lastError",
    "nextAttemptAt",
    "created_at",
    "updated_at",
}


@pytest.fixture
def settings_overrides(request) -> dict[str, Any]:
    return {**FAST, **getattr(request, "param", {})}


async def hooked(client, mailbox, url: str) -> tuple[str, str, dict[str, str]]:
    """A project with a webhook set through the API: its id, its secret and its owner's key."""
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    r = await client.post("/project/create-project", json={"name": "Hooked"}, headers=key)
    pid = r.json()["data"]["id"]
    r = await client.post(
        "/project/call-status/add-webhookurl",
        json={"projectId": pid, "webhookURL": url},
        headers=key,
    )
    assert r.status_code == 200, r.text
    return pid, r.json()["webhookSecret"], key


async def rows(app, pid: str) -> list[WebhookDelivery]:
    async with app.state.ctx.sessionmaker() as session:
        found = await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.project_id == uuid.UUID(pid))
            .order_by(WebhookDelivery.created_at)
        )
        return list(found)


async def until(app, pid: str, *statuses: str, within: float = 10.0) -> WebhookDelivery:
    """The project's one delivery, once it is in one of `statuses`."""
    deadline = time.monotonic() + within
    while True:
        found = await rows(app, pid)
        if len(found) == 1 and found[0].status in statuses:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError([(d.status, d.attempts, d.last_error) for d in found])
        await asyncio.sleep(0.02)


async def jobs_of(app, delivery_id: uuid.UUID) -> list[Job]:
    async with app.state.ctx.sessionmaker() as session:
        found = await session.scalars(select(Job).where(Job.kind == webhooks.KIND))
        return [j for j in found if j.payload.get("delivery_id") == str(delivery_id)]


async def settled_jobs_of(app, delivery_id: uuid.UUID, within: float = 10.0) -> list[Job]:
    """The delivery's jobs once none is running: the delivery row is written `delivered` in
    the attempt's own transaction, and the worker records the job `done` right after."""
    deadline = time.monotonic() + within
    while True:
        jobs = await jobs_of(app, delivery_id)
        if all(j.status not in ("queued", "running") for j in jobs):
            return jobs
        assert time.monotonic() < deadline, [j.status for j in jobs]
        await asyncio.sleep(0.02)


async def listing(client, pid: str, key: dict[str, str], **params: Any) -> httpx.Response:
    return await client.get(f"/project/{pid}/webhook-deliveries", params=params, headers=key)


def v1_values(d: Delivery) -> list[str]:
    header = d.headers["x-talkstack-signature"]
    return [p.removeprefix("v1=") for p in header.split(",") if p.startswith("v1=")]


# --- what a delivery shows -------------------------------------------------------------------


async def test_a_delivery_shows_each_attempt_and_its_outcome(app, client, mailbox, receiver):
    pid, secret, key = await hooked(client, mailbox, receiver.url)
    receiver.fail_first = 1
    await emit(app, pid, event="call.analyzed")

    sent = await receiver.wait_for(2)
    row = await until(app, pid, "delivered")
    r = await listing(client, pid, key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"message", "status", "deliveries", "nextPageToken"}
    assert body["status"] == "success" and body["nextPageToken"] is None
    (shown,) = body["deliveries"]
    assert set(shown) == DELIVERY_KEYS
    event = json.loads(sent[0].body)
    assert shown == {
        **shown,
        "id": str(row.id),
        "eventId": event["id"],
        "event": "call.analyzed",
        "callSid": CALL["callSid"],
        "status": "delivered",
        "attempts": 2,
        "maxAttempts": 5,
        "lastStatusCode": 200,
        "lastError": None,
        "nextAttemptAt": None,
    }
    assert parse_iso_ms(shown["updated_at"]) >= parse_iso_ms(shown["created_at"])
    assert abs(parse_iso_ms(shown["created_at"]).timestamp() - time.time()) < 30
    # The row holds the exact bytes that were sent (and signed).
    assert row.body.encode() == sent[1].body == sent[0].body
    assert verify_signature(secret, sent[1].headers["x-talkstack-signature"], sent[1].body)
    assert "whsec_" not in r.text


@pytest.mark.parametrize(
    "settings_overrides", [{"webhook_retry_base_seconds": 60.0}], indirect=True
)
async def test_a_failed_attempt_shows_the_answer_and_when_the_next_one_is(
    app, client, mailbox, receiver
):
    pid, _, key = await hooked(client, mailbox, receiver.url)
    receiver.fail_first = 1
    await emit(app, pid)

    await until(app, pid, "failed")
    r = await listing(client, pid, key, status="failed")
    (shown,) = r.json()["deliveries"]
    assert shown["attempts"] == 1 and shown["lastStatusCode"] == 500
    assert shown["lastError"] == "the receiver answered HTTP 500"
    # Retry 1 waits 60 s, ±10 %.
    wait = parse_iso_ms(shown["nextAttemptAt"]).timestamp() - time.time()
    assert 40 < wait < 70, wait
    assert (await listing(client, pid, key, status="delivered")).json()["deliveries"] == []


@pytest.mark.parametrize(
    "settings_overrides", [{"webhook_allow_private_hosts": False}], indirect=True
)
async def test_a_refused_address_shows_no_status_code(app, client, mailbox, receiver):
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    pid = await make_project(
        app, acct.user_id, call_status_webhook=receiver.url, webhook_secret="whsec_test"
    )
    await emit(app, pid)

    row = await until(app, pid, "dead")
    assert row.attempts == 5 and row.last_status_code is None and row.next_attempt_at is None
    (shown,) = (await listing(client, pid, key, status="dead")).json()["deliveries"]
    assert shown["lastStatusCode"] is None
    assert "private or reserved address" in shown["lastError"]
    assert receiver.requests == 0


async def test_status_callbacks_store_a_delivery_per_event(app, client, mailbox, receiver):
    pid, _, key = await hooked(client, mailbox, receiver.url)
    sid = "CA" + uuid.uuid4().hex
    async with app.state.ctx.sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(pid))
        assert project is not None
        call = Call(
            user_id=project.user_id,
            project_id=project.id,
            call_sid=sid,
            to_number="+14155550123",
            from_number="+14155550100",
        )
        session.add(call)
        await session.commit()
    ingest = status_ingest(app.state.ctx.sessionmaker)
    for n, status in enumerate(("initiated", "ringing")):
        params = {"CallSid": sid, "CallStatus": status, "SequenceNumber": str(n)}
        assert await ingest.apply(call.id, params)

    sent = await receiver.wait_for(2)
    r = await listing(client, pid, key, event="call.status")
    shown = r.json()["deliveries"]
    assert [d["callSid"] for d in shown] == [sid, sid]
    assert [d["eventId"] for d in reversed(shown)] == [json.loads(d.body)["id"] for d in sent]
    for d in shown:
        (job,) = await jobs_of(app, uuid.UUID(d["id"]))
        assert job.payload["event_id"] == d["eventId"]


# --- redeliver -------------------------------------------------------------------------------


async def test_a_dead_delivery_is_redelivered_with_the_same_event(app, client, mailbox, receiver):
    pid, secret, key = await hooked(client, mailbox, receiver.url)
    receiver.fail_first = 5
    await emit(app, pid)
    dead = await until(app, pid, "dead")
    assert dead.attempts == 5 and dead.last_status_code == 500

    r = await client.post(f"/project/{pid}/webhook-deliveries/{dead.id}/redeliver", headers=key)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "webhook delivery queued again."
    shown = r.json()["delivery"]
    assert shown["id"] == str(dead.id) and shown["eventId"] == dead.event_id
    assert shown["status"] == "pending" and shown["attempts"] == 0

    sent = await receiver.wait_for(6)
    again = await until(app, pid, "delivered")
    assert again.attempts == 1 and again.last_status_code == 200 and again.last_error is None
    assert sent[5].body == sent[0].body == dead.body.encode()
    assert sent[5].headers["x-talkstack-event-id"] == dead.event_id
    assert json.loads(sent[5].body)["id"] == dead.event_id
    assert verify_signature(secret, sent[5].headers["x-talkstack-signature"], sent[5].body)
    # A new series: the dead job stays dead, a second job carried the event.
    jobs = sorted(await settled_jobs_of(app, dead.id), key=lambda j: j.created_at)
    assert [j.status for j in jobs] == ["dead", "done"]
    assert again.job_id == jobs[1].id


@pytest.mark.parametrize(
    "settings_overrides", [{"webhook_retry_base_seconds": 60.0}], indirect=True
)
async def test_redelivering_a_waiting_delivery_sends_it_now(app, client, mailbox, receiver):
    pid, _, key = await hooked(client, mailbox, receiver.url)
    receiver.fail_first = 1
    await emit(app, pid)
    waiting = await until(app, pid, "failed")

    r = await client.post(f"/project/{pid}/webhook-deliveries/{waiting.id}/redeliver", headers=key)
    assert r.status_code == 200, r.text
    await receiver.wait_for(2)  # not in a minute: now
    done = await until(app, pid, "delivered")
    assert done.attempts == 1
    # The waiting job itself was made due, with five tries ahead: no second job.
    (job,) = await settled_jobs_of(app, waiting.id)
    assert job.id == waiting.job_id and job.status == "done" and job.attempts == 1


async def test_a_delivery_being_sent_cannot_be_redelivered(app, client, mailbox, receiver):
    pid, _, key = await hooked(client, mailbox, receiver.url)
    receiver.hang = True
    await emit(app, pid)
    await receiver.wait_for(1)
    (before,) = await rows(app, pid)

    r = await client.post(f"/project/{pid}/webhook-deliveries/{before.id}/redeliver", headers=key)
    assert_error(r, 409, "DELIVERY_IN_PROGRESS")
    (after,) = await rows(app, pid)
    assert (after.status, after.attempts, after.job_id, after.updated_at) == (
        before.status,
        before.attempts,
        before.job_id,
        before.updated_at,
    )
    assert len(await jobs_of(app, before.id)) == 1
    receiver.hang = False
    await until(app, pid, "delivered")
    assert receiver.requests == 1


async def test_redelivery_needs_a_webhook_url(app, client, mailbox, receiver):
    pid, _, key = await hooked(client, mailbox, receiver.url)
    await emit(app, pid)
    done = await until(app, pid, "delivered")
    async with app.state.ctx.sessionmaker() as session:
        await session.execute(
            update(Project).where(Project.id == uuid.UUID(pid)).values(call_status_webhook=None)
        )
        await session.commit()
    r = await client.post(f"/project/{pid}/webhook-deliveries/{done.id}/redeliver", headers=key)
    assert_error(r, 409, "WEBHOOK_NOT_SET")
    assert len(await jobs_of(app, done.id)) == 1


# --- secret rotation -------------------------------------------------------------------------


async def test_rotation_signs_with_both_secrets_for_24_hours(app, client, mailbox, receiver):
    pid, old, key = await hooked(client, mailbox, receiver.url)
    r = await client.post(f"/project/{pid}/webhook-secret/rotate", headers=key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"message", "status", "webhookSecret", "previousSecretExpiresAt"}
    new = body["webhookSecret"]
    assert new.startswith("whsec_") and new != old and old not in r.text
    expires = parse_iso_ms(body["previousSecretExpiresAt"])
    assert abs(expires.timestamp() - (time.time() + 24 * 3600)) < 30
    async with app.state.ctx.sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(pid))
        assert project is not None
        assert project.webhook_secret == new and project.webhook_secret_previous == old
        assert project.webhook_secret_previous_expires_at is not None
    # Never shown again.
    r = await client.get(f"/project/{pid}", headers=key)
    assert new not in r.text and old not in r.text

    await emit(app, pid)
    (first,) = await receiver.wait_for(1)
    header = first.headers["x-talkstack-signature"]
    assert header.startswith("t=") and header.count(",v1=") == 2
    assert len(v1_values(first)) == 2
    for secret in (new, old):
        assert verify_signature(secret, header, first.body)
        assert readme_verify(secret, header, first.body)
    assert not verify_signature("whsec_other", header, first.body)
    assert webhooks.sign(new, first.body, int(header[2:].split(",")[0])).endswith(
        v1_values(first)[0]
    )

    # Once the window is over (moved into the past rather than waited for): the new one only.
    async with app.state.ctx.sessionmaker() as session:
        await session.execute(
            update(Project)
            .where(Project.id == uuid.UUID(pid))
            .values(webhook_secret_previous_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    await emit(app, pid)
    second = (await receiver.wait_for(2))[1]
    header = second.headers["x-talkstack-signature"]
    assert len(v1_values(second)) == 1
    assert verify_signature(new, header, second.body)
    assert readme_verify(new, header, second.body)
    assert not verify_signature(old, header, second.body)
    assert not readme_verify(old, header, second.body)


async def test_a_second_rotation_retires_the_first_old_secret(app, client, mailbox, receiver):
    pid, first, key = await hooked(client, mailbox, receiver.url)
    second = (await client.post(f"/project/{pid}/webhook-secret/rotate", headers=key)).json()
    third = (await client.post(f"/project/{pid}/webhook-secret/rotate", headers=key)).json()
    await emit(app, pid)
    (sent,) = await receiver.wait_for(1)
    header = sent.headers["x-talkstack-signature"]
    assert len(v1_values(sent)) == 2
    assert verify_signature(third["webhookSecret"], header, sent.body)
    assert verify_signature(second["webhookSecret"], header, sent.body)
    assert not verify_signature(first, header, sent.body)


async def test_rotation_needs_a_webhook_url(app, client, mailbox):
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    pid = (await client.post("/project/create-project", json={"name": "P"}, headers=key)).json()[
        "data"
    ]["id"]
    r = await client.post(f"/project/{pid}/webhook-secret/rotate", headers=key)
    assert_error(r, 409, "WEBHOOK_NOT_SET")
    async with app.state.ctx.sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(pid))
        assert project is not None
        assert project.webhook_secret is None and project.webhook_secret_previous is None


# --- pages and filters -----------------------------------------------------------------------


async def seed(
    app, pid: str, events: list[webhooks.CallEvent], *, at: datetime | None = None
) -> None:
    """Deliveries stored without jobs (nothing is sent); all at `at` if given (ties)."""
    made = [
        webhooks.call_event_rows(uuid.UUID(pid), event, {**CALL, "n": n})[1]
        for n, event in enumerate(events)
    ]
    for row in made:
        row["job_id"] = None
        if at is not None:
            row["created_at"] = at
    async with app.state.ctx.sessionmaker() as session:
        await webhooks.insert_deliveries(session, made)
        await session.commit()


async def all_pages(client, pid: str, key: dict[str, str], **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    token = None
    while True:
        r = await listing(client, pid, key, **params, **({"pageToken": token} if token else {}))
        assert r.status_code == 200, r.text
        pages.append([d["id"] for d in r.json()["deliveries"]])
        token = r.json()["nextPageToken"]
        if token is None:
            return pages


async def test_pages_cover_every_delivery_once_newest_first(app, client, mailbox):
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    pid = await make_project(app, acct.user_id)
    await seed(app, pid, ["call.status", "call.analyzed"] * 6)
    # Seven created at the very same instant: the id breaks the tie.
    await seed(app, pid, ["call.status"] * 7, at=datetime.now(UTC) - timedelta(minutes=5))
    stored = await rows(app, pid)
    assert len(stored) == 19
    newest_first = [
        str(d.id) for d in sorted(stored, key=lambda d: (d.created_at, d.id), reverse=True)
    ]

    pages = await all_pages(client, pid, key, pageSize=4)
    assert [len(p) for p in pages] == [4, 4, 4, 4, 3]
    assert [i for p in pages for i in p] == newest_first

    assert await all_pages(client, pid, key) == [newest_first]  # pageSize 20 by default
    exact = await all_pages(client, pid, key, pageSize=19)
    assert exact == [newest_first]

    analyzed = [str(d.id) for d in stored if d.event == "call.analyzed"]
    pages = await all_pages(client, pid, key, pageSize=5, event="call.analyzed")
    assert sorted(i for p in pages for i in p) == sorted(analyzed) and len(pages) == 2
    assert await all_pages(client, pid, key, status="pending", pageSize=100) == [newest_first]
    assert await all_pages(client, pid, key, status="dead") == [[]]


async def test_bad_paging_and_filters_are_400(app, client, mailbox):
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    pid = await make_project(app, acct.user_id)
    other = await make_project(app, acct.user_id, name="Other")
    await seed(app, pid, ["call.status"] * 3)
    await seed(app, other, ["call.status"] * 3)
    token = (await listing(client, pid, key, pageSize=1)).json()["nextPageToken"]
    other_token = (await listing(client, other, key, pageSize=1)).json()["nextPageToken"]
    assert token and other_token

    for params, field in (
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": 101}, "pageSize"),
        ({"pageSize": "ten"}, "pageSize"),
        ({"event": "call.created"}, "event"),
        ({"status": "sent"}, "status"),
    ):
        assert_validation_error(await listing(client, pid, key, **params), field)
    for params in (
        {"pageToken": "garbage"},
        {"pageToken": token[:-2] + ("AA" if not token.endswith("AA") else "BB")},
        {"pageToken": other_token},  # another project's
        {"pageToken": token, "event": "call.status"},  # other filters than it was made for
    ):
        assert_error(await listing(client, pid, key, **params), 400, "INVALID_PAGE_TOKEN")
    r = await client.post(f"/project/{pid}/webhook-deliveries/not-a-uuid/redeliver", headers=key)
    assert_validation_error(r, "delivery_id")


async def test_other_users_and_other_projects_deliveries_are_404(app, client, mailbox, receiver):
    pid, _, _ = await hooked(client, mailbox, receiver.url)
    await emit(app, pid)
    theirs = await until(app, pid, "delivered")
    mallory = await verified_account(client, mailbox)
    m_key = {"x-api-key": await api_key_for(client, mallory)}
    own = (await client.post("/project/create-project", json={"name": "M"}, headers=m_key)).json()
    own_pid = own["data"]["id"]
    missing = str(uuid.uuid4())

    for path, method in (
        (f"/project/{pid}/webhook-deliveries", "GET"),
        (f"/project/{pid}/webhook-deliveries/{theirs.id}/redeliver", "POST"),
        (f"/project/{pid}/webhook-secret/rotate", "POST"),
    ):
        r = await client.request(method, path, headers=m_key)
        body = assert_error(r, 404, "PROJECT_NOT_FOUND")
        r2 = await client.request(method, path.replace(pid, missing), headers=m_key)
        assert r2.json() == body
    # Their delivery under one's own project: no such delivery.
    r = await client.post(
        f"/project/{own_pid}/webhook-deliveries/{theirs.id}/redeliver", headers=m_key
    )
    body = assert_error(r, 404, "DELIVERY_NOT_FOUND")
    r = await client.post(
        f"/project/{own_pid}/webhook-deliveries/{missing}/redeliver", headers=m_key
    )
    assert r.json() == body
    assert (await listing(client, own_pid, m_key)).json()["deliveries"] == []
    await asyncio.sleep(0.1)
    assert receiver.requests == 1
    (still,) = await rows(app, pid)
    assert (still.status, still.attempts, still.job_id) == ("delivered", 1, theirs.job_id)


# --- events queued before deliveries were stored -------------------------------------------


async def test_a_job_queued_before_deliveries_records_on_the_migrated_delivery(
    app, client, mailbox, receiver
):
    pid, _, _ = await hooked(client, mailbox, receiver.url)
    # What the migration leaves: a job whose payload names no delivery, and its delivery
    # under the job's own id.
    job, delivery = webhooks.call_event_rows(uuid.UUID(pid), "call.status", CALL)
    del job["payload"]["delivery_id"]
    async with app.state.ctx.sessionmaker() as session:
        await webhooks.insert_deliveries(session, [{**delivery, "id": job["id"]}])
        await enqueue_many(session, [job])
        await session.commit()

    await receiver.wait_for(1)
    row = await until(app, pid, "delivered")
    assert row.id == job["id"] and row.attempts == 1 and row.last_status_code == 200


def _fill(table: sa.Table, given: dict[str, Any]) -> dict[str, Any]:
    """`given`, plus a value for every other required column (the schema of the time)."""
    row = dict(given)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None:
            continue
        python_type = column.type.python_type
        row[column.name] = {
            bool: False,
            int: 0,
            str: "x",
            datetime: datetime.now(UTC),
            uuid.UUID: uuid.uuid4(),
        }[python_type]
    return row


def test_the_migration_makes_a_delivery_of_every_webhook_job(fresh_database: str):  # noqa: F811
    cfg = migration_config(fresh_database)
    command.upgrade(cfg, "0008")
    engine = sa.create_engine(sync_url(fresh_database))
    user_id, project_id = uuid.uuid4(), uuid.uuid4()
    long_ago = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def job(status: str, attempts: int, error: str | None, sid: str) -> dict[str, Any]:
        payload = webhooks.call_event_payload("call.status", {**CALL, "callSid": sid})
        return {
            "id": uuid.uuid4(),
            "kind": webhooks.KIND,
            "payload": payload,
            "status": status,
            "attempts": attempts,
            "max_attempts": 5,
            "next_attempt_at": long_ago,
            "last_error": error,
            "project_id": project_id,
            "created_at": long_ago,
            "updated_at": long_ago,
        }

    jobs = [
        job("done", 2, "the receiver answered HTTP 500", "CA" + "1" * 32),
        job("dead", 5, "the receiver answered HTTP 503", "CA" + "2" * 32),
        job("queued", 2, "no answer within 5 s", "CA" + "3" * 32),
        job("queued", 0, None, "CA" + "4" * 32),
    ]
    try:
        with engine.begin() as conn:
            meta = sa.MetaData()
            users, projects, jobs_table = (
                sa.Table(name, meta, autoload_with=conn) for name in ("users", "projects", "jobs")
            )
            # Bound as the app binds them (SQLite reflects them as CHAR and TEXT).
            for column in (users.c.id, projects.c.id, projects.c.user_id, jobs_table.c.id):
                column.type = sa.Uuid()
            jobs_table.c.project_id.type = sa.Uuid()
            jobs_table.c.payload.type = sa.JSON()
            conn.execute(
                sa.insert(users),
                _fill(users, {"id": user_id, "email": "a@example.com", "created_at": long_ago}),
            )
            conn.execute(
                sa.insert(projects),
                _fill(projects, {"id": project_id, "user_id": user_id, "is_deleted": False}),
            )
            conn.execute(sa.insert(jobs_table), jobs)
            price = job("queued", 0, None, "CA" + "5" * 32)
            conn.execute(sa.insert(jobs_table), [{**price, "kind": "call.price", "payload": {}}])

        command.upgrade(cfg, "0009")
        with engine.connect() as conn:
            found = {
                row.id: row for row in conn.execute(sa.select(WebhookDelivery.__table__)).all()
            }
        assert set(found) == {j["id"] for j in jobs}
        expected = [
            ("delivered", 2, 500, None, None),
            ("dead", 5, 503, "the receiver answered HTTP 503", None),
            ("failed", 2, None, "no answer within 5 s", long_ago),
            ("pending", 0, None, None, long_ago),
        ]
        for j, (status, attempts, code, error, due) in zip(jobs, expected, strict=True):
            row = found[j["id"]]
            assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
                status,
                attempts,
                code,
                error,
            )
            assert row.next_attempt_at == due
            assert row.job_id == j["id"] and row.project_id == project_id
            assert row.event_id == j["payload"]["event_id"] and row.event == "call.status"
            assert row.body == j["payload"]["body"]
            assert row.call_sid == json.loads(row.body)["call"]["callSid"]
            assert row.created_at == long_ago
        command.downgrade(cfg, "0008")
    finally:
        engine.dispose()


@pytest.mark.parametrize("settings_overrides", [{"run_jobs_in_process": False}], indirect=True)
async def test_redeliveries_at_once_queue_the_event_once(app, client, mailbox):
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    pid = await make_project(
        app, acct.user_id, call_status_webhook="https://93.184.216.34/hook", webhook_secret="s"
    )
    # Its job purged long ago: a redelivery makes a new one.
    await seed(app, pid, ["call.status"])
    (delivery,) = await rows(app, pid)
    url = f"/project/{pid}/webhook-deliveries/{delivery.id}/redeliver"

    answers = await asyncio.gather(*(client.post(url, headers=key) for _ in range(6)))
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    (job,) = await jobs_of(app, delivery.id)
    assert job.status == "queued" and job.attempts == 0
    (after,) = await rows(app, pid)
    assert after.job_id == job.id and after.status == "pending"


@pytest.mark.parametrize("settings_overrides", [{"job_lease_seconds": 0.3}], indirect=True)
async def test_a_worker_that_died_on_the_last_attempt_leaves_the_delivery_dead(
    app, client, mailbox, receiver
):
    pid, _, key = await hooked(client, mailbox, receiver.url)
    job, delivery = webhooks.call_event_rows(uuid.UUID(pid), "call.status", CALL)
    # Its fifth attempt was claimed by a worker that then died: the lease ran out.
    lost = datetime.now(UTC) - timedelta(seconds=5)
    job.update(status="running", attempts=5, locked_until=lost)
    delivery.update(status="failed", attempts=4, last_status_code=500, next_attempt_at=lost)
    async with app.state.ctx.sessionmaker() as session:
        await webhooks.insert_deliveries(session, [delivery])
        await enqueue_many(session, [job])
        await session.commit()

    row = await until(app, pid, "dead")
    assert row.attempts == 5 and row.last_status_code is None and row.next_attempt_at is None
    assert row.last_error == "The worker stopped during the last attempt (lease expired)."
    (shown,) = (await listing(client, pid, key, status="dead")).json()["deliveries"]
    assert shown["id"] == str(delivery["id"])
    assert receiver.requests == 0


# --- retention -------------------------------------------------------------------------------


async def settle(app, pid: str, statuses: list[str]) -> list[WebhookDelivery]:
    """Give the project's deliveries, oldest first, these statuses."""
    stored = await rows(app, pid)
    async with app.state.ctx.sessionmaker() as session:
        for row, status in zip(stored, statuses, strict=True):
            await session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == row.id).values(status=status)
            )
        await session.commit()
    return stored


async def test_settled_deliveries_are_deleted_after_the_retention_and_the_rest_kept(
    app, client, mailbox
):
    acct = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, acct)}
    pid = await make_project(app, acct.user_id)
    await seed(app, pid, ["call.status"] * 4, at=datetime.now(UTC) - timedelta(days=31))
    await seed(app, pid, ["call.status", "call.analyzed"])
    stored = await settle(app, pid, ["delivered", "dead", "failed", "pending", "delivered", "dead"])

    assert await purge_expired(app.state.ctx.sessionmaker, timedelta(days=30)) == 2

    left = await rows(app, pid)
    assert [d.id for d in left] == [d.id for d in stored[2:]]  # still retried, or recent
    shown = (await listing(client, pid, key)).json()["deliveries"]
    assert {d["id"] for d in shown} == {str(d.id) for d in stored[2:]}
    gone = f"/project/{pid}/webhook-deliveries/{stored[0].id}/redeliver"
    assert (await client.post(gone, headers=key)).status_code == 404
    assert await purge_expired(app.state.ctx.sessionmaker, timedelta(days=30)) == 0


@pytest.mark.parametrize(
    "settings_overrides",
    [{**FAST, "job_lease_seconds": 0.3, "webhook_delivery_retention_days": 7}],
    indirect=True,
)
async def test_the_job_worker_purges_expired_deliveries_as_it_runs(app, client, mailbox):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id)
    await seed(app, pid, ["call.status"], at=datetime.now(UTC) - timedelta(days=8))
    await seed(app, pid, ["call.status"], at=datetime.now(UTC) - timedelta(days=6))
    kept = (await settle(app, pid, ["delivered", "delivered"]))[1]

    deadline = time.monotonic() + 10
    while len(found := await rows(app, pid)) > 1:
        assert time.monotonic() < deadline, "the expired delivery was never purged"
        await asyncio.sleep(0.05)
    assert [d.id for d in found] == [kept.id]


def test_the_api_schema_lists_every_delivery_status() -> None:
    # The stored states (the model's StrEnum) and the API's Literal (its OpenAPI enum) agree.
    assert get_args(ShownStatus) == tuple(DeliveryStatus)
