"""Project webhooks (docs/webhooks.md): signed events, retried, ordered, never sent inward."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.integrations.webhooks import sender as webhooks
from app.integrations.webhooks.sender import enqueue_call_event, verify_signature
from app.integrations.webhooks.ssrf import blocked_reason, guarded_client
from app.models import Job, Project
from tests.factories import api_key_for, make_project, parse_iso_ms, verified_account

FAST = {
    # The receiver listens on 127.0.0.1.
    "webhook_allow_private_hosts": True,
    "webhook_retry_base_seconds": 0.02,
    "webhook_timeout_seconds": 2.0,
    "job_poll_interval_seconds": 0.05,
    "job_retry_base_seconds": 0.01,
}
CALL = {"callSid": "CA" + "0" * 32, "status": "ringing", "to": "+15005550006", "seconds": None}


@pytest.fixture
def settings_overrides(request) -> dict[str, Any]:
    # A test changes more with @pytest.mark.parametrize("settings_overrides", [...], indirect=True).
    return {**FAST, **getattr(request, "param", {})}


def readme_verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    # The standalone verifier of docs/webhooks.md, verbatim: receivers copy this.
    pairs = [p.split("=", 1) for p in header.split(",") if "=" in p]
    t = next((value for key, value in pairs if key == "t"), "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    # Two v1 values for 24 hours after a secret rotation: either may match.
    return any(hmac.compare_digest(expected, value) for key, value in pairs if key == "v1")


async def hooked_project(client, mailbox, url: str) -> tuple[str, str]:
    """A project whose webhook was set through the API; its id and the secret shown once."""
    acct = await verified_account(client, mailbox)
    headers = {"x-api-key": await api_key_for(client, acct)}
    r = await client.post("/project/create-project", json={"name": "Hooked"}, headers=headers)
    pid = r.json()["data"]["id"]
    r = await client.post(
        "/project/call-status/add-webhookurl",
        json={"projectId": pid, "webhookURL": url},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return pid, r.json()["webhookSecret"]


async def emit(
    app, project_id: str, *, event: str = "call.status", call: dict[str, Any] | None = None
) -> None:
    async with app.state.ctx.sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(project_id))
        await enqueue_call_event(session, project=project, event=event, call=call or CALL)  # type: ignore[arg-type]
        await session.commit()


async def webhook_jobs(app) -> list[Job]:
    async with app.state.ctx.sessionmaker() as session:
        found = await session.scalars(
            select(Job).where(Job.kind == webhooks.KIND).order_by(Job.created_at)
        )
        return list(found)


async def settled(app, *statuses: str, count: int = 1, within: float = 10.0) -> list[Job]:
    deadline = time.monotonic() + within
    while True:
        jobs = await webhook_jobs(app)
        if len(jobs) >= count and all(j.status in statuses for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError([(j.status, j.attempts, j.last_error) for j in jobs])
        await asyncio.sleep(0.02)


async def test_event_is_delivered_signed_with_the_exact_stored_body(app, client, mailbox, receiver):
    pid, secret = await hooked_project(client, mailbox, receiver.url)
    assert secret.startswith("whsec_")
    await emit(app, pid, event="call.analyzed")

    (delivery,) = await receiver.wait_for(1)
    (job,) = await settled(app, "done")
    assert delivery.method == "POST" and delivery.path == "/hooks/talkstack"
    assert delivery.body == job.payload["body"].encode()
    body = json.loads(delivery.body)
    assert set(body) == {"id", "event", "call", "timestamp"}
    assert body["event"] == "call.analyzed" and body["call"] == CALL
    assert body["id"].startswith("evt_") and len(body["id"]) == 36
    assert abs(parse_iso_ms(body["timestamp"]).timestamp() - time.time()) < 30
    headers = delivery.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "Talkstack-Webhooks/1"
    assert headers["x-talkstack-event-id"] == body["id"]
    signature = headers["x-talkstack-signature"]
    t = int(signature.split(",")[0].removeprefix("t="))
    assert abs(t - time.time()) < 30
    assert verify_signature(secret, signature, delivery.body)
    assert readme_verify(secret, signature, delivery.body)
    # Any change to the body, the secret or the timestamp breaks it.
    tampered = delivery.body.replace(b"call.analyzed", b"call.status")
    assert not verify_signature(secret, signature, tampered)
    assert not readme_verify(secret, signature, tampered)
    assert not verify_signature(secret + "x", signature, delivery.body)
    forged = signature.replace(f"t={t}", f"t={t + 1}")
    assert not verify_signature(secret, forged, delivery.body)
    assert not readme_verify(secret, forged, delivery.body)
    assert job.attempts == 1 and job.last_error is None


def test_verify_signature_rejects_old_and_malformed_headers():
    body = b'{"id":"evt_1"}'
    now = int(time.time())
    good = webhooks.sign("whsec_k", body, now)
    assert verify_signature("whsec_k", good, body)
    assert verify_signature("whsec_k", good, body.decode())
    stale = webhooks.sign("whsec_k", body, now - 301)
    assert not verify_signature("whsec_k", stale, body)
    assert verify_signature("whsec_k", stale, body, tolerance=600)
    assert not readme_verify("whsec_k", stale, body)
    v1 = good.split(",")[1]
    for header in ("", "t=,v1=", v1, f"t=abc,{v1}", f"t={now}", f"t={now},v1=", "garbage"):
        assert not verify_signature("whsec_k", header, body), header
        assert not readme_verify("whsec_k", header, body), header


async def test_event_ids_are_unique(app, client, mailbox, receiver):
    pid, _ = await hooked_project(client, mailbox, receiver.url)
    for _ in range(3):
        await emit(app, pid)
    deliveries = await receiver.wait_for(3)
    ids = {json.loads(d.body)["id"] for d in deliveries}
    assert len(ids) == 3
    assert {d.headers["x-talkstack-event-id"] for d in deliveries} == ids


async def test_failed_deliveries_are_retried_with_the_same_event(app, client, mailbox, receiver):
    pid, secret = await hooked_project(client, mailbox, receiver.url)
    receiver.fail_first = 2
    await emit(app, pid)

    deliveries = await receiver.wait_for(3)
    (job,) = await settled(app, "done")
    assert job.attempts == 3
    assert job.last_error == "the receiver answered HTTP 500"
    assert len({d.body for d in deliveries}) == 1
    assert len({d.headers["x-talkstack-event-id"] for d in deliveries}) == 1
    for d in deliveries:
        assert verify_signature(secret, d.headers["x-talkstack-signature"], d.body)
    await asyncio.sleep(0.2)
    assert len(receiver.deliveries) == 3


@pytest.mark.parametrize("settings_overrides", [{"webhook_timeout_seconds": 0.3}], indirect=True)
async def test_a_receiver_that_does_not_answer_is_retried(app, client, mailbox, receiver):
    pid, _ = await hooked_project(client, mailbox, receiver.url)
    receiver.hang = True
    await emit(app, pid)
    (job,) = await settled(app, "queued", "running")
    deadline = time.monotonic() + 10
    while job.last_error is None:
        assert time.monotonic() < deadline, "the first attempt never timed out"
        await asyncio.sleep(0.02)
        (job,) = await webhook_jobs(app)
    receiver.hang = False
    await receiver.wait_for(2)
    (job,) = await settled(app, "done")
    assert job.attempts == 2
    assert job.last_error == "no answer within 0.3 s"


async def test_always_failing_event_dies_after_five_tries_and_is_logged(
    app, client, mailbox, receiver, caplog
):
    caplog.set_level(logging.INFO, logger="talkstack.jobs")
    pid, _ = await hooked_project(client, mailbox, receiver.url)
    receiver.fail_first = 1000
    await emit(app, pid)

    (job,) = await settled(app, "dead")
    assert job.attempts == 5
    assert len(receiver.deliveries) == 5
    assert job.last_error == "the receiver answered HTTP 500"
    dead = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(dead) == 1
    message = dead[0].getMessage()
    assert str(job.id) in message and webhooks.KIND in message and "HTTP 500" in message
    # Nothing secret in the log: not the secret, not the URL (it may carry a token).
    assert receiver.url not in caplog.text and "whsec_" not in caplog.text


def test_retry_schedule_spreads_five_tries_over_about_an_hour():
    for _ in range(20):
        delays = [webhooks.retry_delay(n, 60.0) for n in range(1, webhooks.MAX_ATTEMPTS)]
        for delay, nominal in zip(delays, (60, 240, 600, 2700), strict=True):
            assert 0.9 * nominal <= delay <= 1.1 * nominal
        assert 50 * 60 <= sum(delays) <= 70 * 60


@pytest.mark.parametrize(
    "settings_overrides", [{"webhook_allow_private_hosts": False}], indirect=True
)
async def test_private_address_in_the_database_is_refused_at_send_time(
    app, client, mailbox, receiver
):
    acct = await verified_account(client, mailbox)
    # Saved before the rule applied (or by hand): the worker must still refuse it.
    pid = await make_project(
        app, acct.user_id, call_status_webhook=receiver.url, webhook_secret="whsec_test"
    )
    await emit(app, pid)

    (job,) = await settled(app, "dead")
    assert job.attempts == 5
    assert job.last_error is not None and "private or reserved address" in job.last_error
    assert receiver.requests == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]"])
async def test_the_guard_refuses_before_connecting(receiver, host):
    url = receiver.url.replace("127.0.0.1", host)
    async with guarded_client(allow_private=False, timeout=2.0) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.post(url, content=b"{}")
    assert blocked_reason(caught.value) is not None
    assert receiver.requests == 0


async def test_the_guard_refuses_cloud_metadata_without_trying_it():
    started = time.monotonic()
    async with guarded_client(allow_private=False, timeout=5.0) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get("http://169.254.169.254/latest/meta-data/")
    assert "169.254.169.254" in (blocked_reason(caught.value) or "")
    # Refused outright, not after a connect attempt timed out.
    assert time.monotonic() - started < 1.0


async def test_the_guard_lets_private_hosts_through_when_allowed(receiver):
    async with guarded_client(allow_private=True, timeout=2.0) as http:
        r = await http.post(receiver.url.replace("127.0.0.1", "localhost"), content=b"{}")
    assert r.status_code == 200
    (delivery,) = await receiver.wait_for(1)
    # The Host header keeps the name; the connection went to the checked address.
    assert delivery.headers["host"] == f"localhost:{receiver.port}"


async def test_events_of_a_project_arrive_in_order(app, client, mailbox, receiver):
    # Slow answers: deliveries sent in parallel would overtake each other.
    receiver.delay = 0.02
    first, _ = await hooked_project(client, mailbox, receiver.url + "/a")
    second, _ = await hooked_project(client, mailbox, receiver.url + "/b")
    # One transaction, then one at a time: the worker gets both a batch and a trickle.
    async with app.state.ctx.sessionmaker() as session:
        projects = [await session.get(Project, uuid.UUID(p)) for p in (first, second)]
        for n in range(8):
            for project in projects:
                await enqueue_call_event(
                    session,
                    project=project,
                    event="call.status",
                    call={**CALL, "n": n},
                )
        await session.commit()
    for n in range(8, 12):
        await emit(app, first, call={**CALL, "n": n})
        await emit(app, second, call={**CALL, "n": n})
    deliveries = await receiver.wait_for(24)
    for path in ("/hooks/talkstack/a", "/hooks/talkstack/b"):
        seen = [json.loads(d.body)["call"]["n"] for d in deliveries if d.path == path]
        assert seen == list(range(12))
        # One at a time per project: the next event waits for the previous answer.
        assert receiver.peak_in_flight[path] == 1


async def test_project_without_webhook_queues_nothing(app, client, mailbox):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id)
    await emit(app, pid)
    async with app.state.ctx.sessionmaker() as session:
        assert (await session.scalar(select(func.count()).select_from(Job))) == 0


@pytest.mark.parametrize("change", ["webhook removed", "project deleted"])
async def test_event_is_dropped_when_the_webhook_is_gone_at_send_time(
    app, client, mailbox, receiver, change
):
    pid, _ = await hooked_project(client, mailbox, receiver.url)
    async with app.state.ctx.sessionmaker() as session:
        project = await session.get(Project, uuid.UUID(pid))
        assert project is not None
        await enqueue_call_event(session, project=project, event="call.status", call=CALL)
        if change == "webhook removed":
            project.call_status_webhook = None
        else:
            project.is_deleted = True
        await session.commit()
    (job,) = await settled(app, "done")
    assert job.attempts == 1
    await asyncio.sleep(0.1)
    assert receiver.requests == 0
