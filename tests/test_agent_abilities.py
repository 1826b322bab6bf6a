"""The agent's optional abilities beyond the Talkstack docs: a transfer number, webhook tools,
a voicemail message and success criteria. Validated like every field: bad input is a 400 that
stores nothing; an old client that sends none of them sees them at their defaults."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from app.models import Agent, Project
from tests.factories import api_key_for, assert_error, assert_validation_error, verified_account

TOOL = {
    "name": "book_appointment",
    "description": "Book the appointment the callee agreed to.",
    "parameters": {
        "type": "object",
        "properties": {"day": {"type": "string"}, "time": {"type": "string"}},
        "required": ["day", "time"],
    },
    "url": "https://93.184.215.14/book",  # a public address: no DNS in tests
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def key(client, mailbox) -> dict[str, str]:
    acct = await verified_account(client, mailbox)
    return {"x-api-key": await api_key_for(client, acct)}


@pytest.fixture
async def project(client, key) -> str:
    r = await client.post("/project/create-project", json={"name": "Clinic"}, headers=key)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["id"])


def create(client, key, project, **fields: Any):
    body = {"name": "Jack", "systemInstruction": "You are Jack.", "projectId": project, **fields}
    return client.post("/agent/create-agent", json=body, headers=key)


async def agents_stored(app) -> int:
    async with app.state.ctx.sessionmaker() as s:
        return int(await s.scalar(select(func.count()).select_from(Agent)) or 0)


async def test_every_ability_is_stored_and_shown(client, key, project, app):
    r = await create(
        client,
        key,
        project,
        transferNumber="+1 (415) 555-0199",
        transferMode="warm",
        tools=[{**TOOL, "timeoutSeconds": 5, "fillerMessage": "One moment."}],
        voicemailMessage="Hi {{name}}, please call us back.",
        successCriteria="The callee booked an appointment.",
    )
    assert r.status_code == 200, r.text
    agent = r.json()["data"]
    assert agent["transferNumber"] == "+14155550199" and agent["transferMode"] == "warm"
    assert agent["tools"] == [{**TOOL, "timeoutSeconds": 5.0, "fillerMessage": "One moment."}]
    assert agent["voicemailMessage"] == "Hi {{name}}, please call us back."
    assert agent["successCriteria"] == "The callee booked an appointment."
    # Tool requests are signed with the project's secret, made now and shown this once.
    secret = agent["webhookSecret"]
    assert secret.startswith("whsec_")
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.get(Project, uuid.UUID(project))).webhook_secret == secret
    r = await client.post(
        "/agent", json={"projectId": project, "agentId": agent["id"]}, headers=key
    )
    assert "webhookSecret" not in r.json() and r.json()["tools"][0]["name"] == TOOL["name"]


async def test_put_changes_and_clears_abilities(client, key, project):
    r = await create(client, key, project, transferNumber="+14155550199", tools=[TOOL])
    agent_id = r.json()["data"]["id"]
    ref = {"projectId": project, "agentId": agent_id}
    r = await client.put(
        "/agent",
        json={**ref, "transferNumber": None, "tools": [], "voicemailMessage": "Call back."},
        headers=key,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["transferNumber"], body["tools"], body["voicemailMessage"]) == (
        None,
        [],
        "Call back.",
    )
    assert "webhookSecret" not in body  # the project has its secret already


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"transferMode": "lukewarm"}, "transferMode"),
        ({"tools": [{**TOOL, "name": "book appointment"}]}, "tools.0.name"),
        ({"tools": [{**TOOL, "name": "end_call"}]}, "tools.0.name"),
        ({"tools": [{**TOOL, "parameters": {"type": "string"}}]}, "tools.0.parameters"),
        (
            {"tools": [{**TOOL, "parameters": {"type": "object", "properties": {"a": 1}}}]},
            "tools.0.parameters",
        ),
        ({"tools": [{**TOOL, "timeoutSeconds": 120}]}, "tools.0.timeoutSeconds"),
        ({"tools": [TOOL, TOOL]}, "tools"),
        ({"tools": [{**TOOL, "name": f"t{i}"} for i in range(21)]}, "tools"),
        ({"tools": [{k: v for k, v in TOOL.items() if k != "url"}]}, "tools.0.url"),
        ({"voicemailMessage": "x" * 2001}, "voicemailMessage"),
        ({"successCriteria": ""}, "successCriteria"),
    ],
)
async def test_bad_abilities_are_400_and_store_nothing(client, key, project, app, fields, field):
    r = await create(client, key, project, **fields)
    assert_validation_error(r, field)
    assert await agents_stored(app) == 0


async def test_a_bad_transfer_number_is_400(client, key, project, app):
    r = await create(client, key, project, transferNumber="12345")
    assert_error(
        r,
        400,
        "INVALID_PHONE_NUMBER",
        errors=[{"field": "transferNumber", "message": "is not a valid E.164 phone number"}],
    )
    assert await agents_stored(app) == 0


@pytest.mark.parametrize(
    "url",
    ["ftp://93.184.215.14/x", "http://127.0.0.1:9/x", "https://10.0.0.7/x", "https://[::1]/x"],
)
async def test_a_tool_url_into_a_private_network_is_400(client, key, project, app, url):
    r = await create(client, key, project, tools=[{**TOOL, "url": url}])
    assert r.status_code == 400, r.text
    body = r.json()
    assert (body["status"], body["code"]) == ("error", "INVALID_TOOL_URL")
    assert [e["field"] for e in body["errors"]] == ["tools.0.url"]
    assert await agents_stored(app) == 0
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.get(Project, uuid.UUID(project))).webhook_secret is None
