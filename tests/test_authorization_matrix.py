"""Every endpoint that takes a project, agent or number id, tried by another user: 404, no change.

Another user's object must be indistinguishable from a missing one, so each attempt is also
compared with the same request for an id that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select, update

from app.integrations.webhooks import sender as webhooks
from app.models import (
    Agent,
    Call,
    CallAnalysis,
    Job,
    PhoneNumber,
    Project,
    User,
    WebhookDelivery,
)
from tests.factories import api_key_for, verified_account

NUMBER = "+14155550100"


@pytest.fixture
def settings_overrides(twilio_standin) -> dict[str, Any]:
    return twilio_standin.settings_overrides()


async def snapshot(app) -> list[dict[str, Any]]:
    """Every row of every table these endpoints can touch, as plain values."""
    out = []
    async with app.state.ctx.sessionmaker() as s:
        for model in (User, Project, Agent, PhoneNumber, Call, CallAnalysis, Job, WebhookDelivery):
            for row in (await s.execute(select(model))).scalars():
                out.append({c.key: getattr(row, c.key) for c in model.__table__.columns})
    return sorted(out, key=lambda r: str(r["id"]))


def attempts(
    pid: str, aid: str, nid: str, own_pid: str, own_aid: str, sid: str, did: str
) -> list[tuple[str, str, Any]]:
    hook = "https://93.184.216.34/hook"
    callee = "+14155550123"
    return [
        ("POST", "/call/makeCall", {"number": callee, "projectId": pid, "agentId": aid}),
        ("POST", "/call/makeCall", {"number": callee, "projectId": own_pid, "agentId": aid}),
        ("POST", "/call", {"sid": sid}),
        ("POST", "/call", {"callSid": sid, "projectId": pid}),
        ("POST", "/call/get-call-history", {"projectId": pid}),
        ("POST", "/call/analysis", {"sid": sid}),
        ("GET", f"/project/{pid}", None),
        ("PUT", f"/project/{pid}", {"name": "mine now", "webhookUrl": hook}),
        ("DELETE", f"/project/{pid}", {"cascade": True}),
        ("POST", "/project/call-status/add-webhookurl", {"projectId": pid, "webhookURL": hook}),
        ("POST", "/project/active-agent", {"projectId": pid}),
        ("GET", f"/project/{pid}/webhook-deliveries", None),
        ("POST", f"/project/{pid}/webhook-deliveries/{did}/redeliver", None),
        ("POST", f"/project/{own_pid}/webhook-deliveries/{did}/redeliver", None),
        ("POST", f"/project/{pid}/webhook-secret/rotate", None),
        ("PATCH", "/project/active-agent", {"projectId": pid, "active_agent": aid}),
        ("PATCH", "/project/active-agent", {"projectId": own_pid, "active_agent": aid}),
        ("PATCH", f"/project/active-agent/{aid}", None),
        ("POST", "/user/set-active-project", {"projectId": pid}),
        ("POST", "/agent/create-agent", {"name": "x", "systemInstruction": "x", "projectId": pid}),
        ("POST", "/agent", {"projectId": pid, "agentId": aid}),
        ("POST", "/agent", {"projectId": own_pid, "agentId": aid}),
        ("PUT", "/agent", {"projectId": pid, "agentId": aid, "name": "mine"}),
        ("PUT", "/agent", {"projectId": own_pid, "agentId": aid, "name": "mine"}),
        ("DELETE", "/agent", {"projectId": pid, "agentId": aid}),
        ("DELETE", "/agent", {"projectId": own_pid, "agentId": aid}),
        ("GET", f"/agent/{pid}", None),
        ("POST", "/phone-number", {"phoneNumberId": nid}),
        ("POST", "/phone-number", {"agentId": aid}),
        ("POST", "/phone-number", {"projectId": pid}),
        ("POST", "/phone-number/add-number", {"e164": NUMBER, "agentId": aid, "projectId": pid}),
        (
            "POST",
            "/phone-number/add-number",
            {"e164": NUMBER, "agentId": own_aid, "projectId": pid},
        ),
        (
            "POST",
            "/phone-number/add-number",
            {"e164": NUMBER, "agentId": aid, "projectId": own_pid},
        ),
    ]


async def test_another_users_ids_are_404_and_change_nothing(client, mailbox, app, twilio_standin):
    twilio_standin.add_incoming_number(NUMBER)
    alice = await verified_account(client, mailbox)
    a_key = {"x-api-key": await api_key_for(client, alice)}
    r = await client.post("/project/create-project", json={"name": "A"}, headers=a_key)
    pid = r.json()["data"]["id"]
    r = await client.post(
        "/agent/create-agent",
        json={"name": "J", "systemInstruction": "Hi", "projectId": pid, "phoneNumber": NUMBER},
        headers=a_key,
    )
    aid = r.json()["data"]["id"]
    r = await client.post("/phone-number", json={"agentId": aid}, headers=a_key)
    nid = r.json()["data"]["id"]
    r = await client.post(
        "/call/makeCall",
        json={"number": "+14155550123", "projectId": pid, "agentId": aid},
        headers=a_key,
    )
    sid = r.json()["call"]["call_id"]
    await client.patch(
        "/project/active-agent", json={"projectId": pid, "active_agent": aid}, headers=a_key
    )
    # A webhook and one delivered event (stored without a job: nothing is sent meanwhile).
    async with app.state.ctx.sessionmaker() as s:
        await s.execute(
            update(Project)
            .where(Project.id == uuid.UUID(pid))
            .values(call_status_webhook="https://93.184.216.34/hook", webhook_secret="whsec_a")
        )
        _, delivery = webhooks.call_event_rows(uuid.UUID(pid), "call.status", {"callSid": sid})
        await webhooks.insert_deliveries(s, [{**delivery, "job_id": None, "status": "delivered"}])
        await s.commit()
    did = str(delivery["id"])

    bob = await verified_account(client, mailbox)
    b_key = {"x-api-key": await api_key_for(client, bob)}
    r = await client.post("/project/create-project", json={"name": "B"}, headers=b_key)
    own_pid = r.json()["data"]["id"]
    r = await client.post(
        "/agent/create-agent",
        json={"name": "K", "systemInstruction": "Hi", "projectId": own_pid},
        headers=b_key,
    )
    own_aid = r.json()["data"]["id"]

    before = await snapshot(app)
    twilio_calls = len(twilio_standin.requests)
    missing = str(uuid.uuid4())
    theirs = attempts(pid, aid, nid, own_pid, own_aid, sid, did)
    nothing = attempts(missing, missing, missing, own_pid, own_aid, "CA" + "0" * 32, missing)
    for (method, path, body), (_, missing_path, missing_body) in zip(theirs, nothing, strict=True):
        r = await client.request(method, path, json=body, headers=b_key)
        assert r.status_code == 404, (method, path, body, r.text)
        # Indistinguishable from an id that exists nowhere.
        r2 = await client.request(method, missing_path, json=missing_body, headers=b_key)
        assert r2.status_code == 404, (method, missing_path, r2.text)
        assert r.json()["code"] == r2.json()["code"], (method, path)
        assert r.json()["message"] == r2.json()["message"], (method, path)
    assert await snapshot(app) == before
    assert len(twilio_standin.requests) == twilio_calls
