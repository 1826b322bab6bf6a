"""Agents: create, read, update, delete, list; voices and numbers as the contract says."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, select

from app.models import Agent, PhoneNumber, Project
from tests.factories import api_key_for, assert_error, assert_validation_error, verified_account

VOICE = "EXAVITQu4vr4xnSDxMaL"  # ElevenLabs' premade "Sarah"
NUMBER = "+14155550100"
AGENT_KEYS = {
    "id", "name", "projectId", "systemInstruction", "voice_id", "phoneNumber", "firstMessage",
    "language", "maxCallDurationSeconds", "analysisQuestions", "created_at", "updated_at",
    # Additions beyond the docs (optional; their defaults change nothing for old clients).
    "transferNumber", "transferMode", "tools", "voicemailMessage", "successCriteria",
}  # fmt: skip


@pytest.fixture
def settings_overrides(twilio_standin) -> dict[str, Any]:
    return twilio_standin.settings_overrides()


@pytest.fixture
async def key(client, mailbox) -> dict[str, str]:
    acct = await verified_account(client, mailbox)
    return {"x-api-key": await api_key_for(client, acct)}


@pytest.fixture
async def project(client, key) -> str:
    r = await client.post("/project/create-project", json={"name": "Clinic"}, headers=key)
    assert r.status_code == 200, r.text
    pid: str = r.json()["data"]["id"]
    return pid


async def create_agent(client, key, project, **fields: Any) -> dict[str, Any]:
    body = {"name": "Jack", "systemInstruction": "You are Jack.", "projectId": project, **fields}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "successfully created agent."
    data: dict[str, Any] = r.json()["data"]
    return data


async def agent_count(app) -> int:
    async with app.state.ctx.sessionmaker() as s:
        return int((await s.execute(select(func.count()).select_from(Agent))).scalar_one())


async def test_create_minimal_gets_defaults(client, key, project, app):
    agent = await create_agent(client, key, project)
    assert set(agent) == AGENT_KEYS
    assert agent["projectId"] == project
    assert agent["phoneNumber"] is None and agent["firstMessage"] is None
    assert agent["language"] == "en-US" and agent["maxCallDurationSeconds"] == 600
    assert (agent["transferNumber"], agent["transferMode"], agent["tools"]) == (None, "cold", [])
    assert agent["voicemailMessage"] is None and agent["successCriteria"] is None
    assert agent["analysisQuestions"] == []
    first_voice = (await client.get("/voices", headers=key)).json()["voices"][0]["voice_id"]
    assert agent["voice_id"] == first_voice


async def test_create_with_every_field(client, key, project):
    questions: list[dict[str, Any]] = [
        {"question": "Did they confirm?", "type": "Boolean"},
        {"question": "How many people?", "type": "Number"},
        {"question": "Notes", "type": "Text"},
        {"question": "Slot", "type": "Selector", "options": ["Morning", "Afternoon"]},
    ]
    agent = await create_agent(
        client,
        key,
        project,
        voice_id=VOICE,
        firstMessage="Hello {{name}}",
        language="de-DE",
        maxCallDurationSeconds=300,
        analysisQuestions=questions,
    )
    assert agent["voice_id"] == VOICE and agent["firstMessage"] == "Hello {{name}}"
    assert agent["language"] == "de-DE" and agent["maxCallDurationSeconds"] == 300
    # Only Selector questions carry options; the others have no "options" key at all.
    assert agent["analysisQuestions"] == questions


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"name": ""}, "name"),
        ({"systemInstruction": None}, "systemInstruction"),
        ({"language": "english please"}, "language"),
        ({"maxCallDurationSeconds": 5}, "maxCallDurationSeconds"),
        ({"maxCallDurationSeconds": 100000}, "maxCallDurationSeconds"),
        (
            {"analysisQuestions": [{"question": "Pick", "type": "Selector", "options": ["A"]}]},
            "analysisQuestions.0",
        ),
        (
            {
                "analysisQuestions": [
                    {"question": "Pick", "type": "Selector", "options": ["A", "A"]}
                ]
            },
            "analysisQuestions.0",
        ),
        (
            {"analysisQuestions": [{"question": "Ok?", "type": "Boolean", "options": ["Y", "N"]}]},
            "analysisQuestions.0",
        ),
        ({"analysisQuestions": [{"question": "Ok?", "type": "Maybe"}]}, "analysisQuestions.0.type"),
        ({"analysisQuestions": [{"question": "", "type": "Text"}]}, "analysisQuestions.0.question"),
    ],
)
async def test_create_bad_input(client, key, project, app, fields, field):
    body = {"name": "Jack", "systemInstruction": "Hi", "projectId": project, **fields}
    assert_validation_error(await client.post("/agent/create-agent", json=body, headers=key), field)
    assert await agent_count(app) == 0


async def test_unknown_voice_is_400_and_creates_nothing(client, key, project, app):
    body = {"name": "J", "systemInstruction": "Hi", "projectId": project, "voice_id": "nope"}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    body = assert_error(
        r, 400, "VOICE_NOT_FOUND", errors=[{"field": "voice_id", "message": "is not a known voice"}]
    )
    assert await agent_count(app) == 0


async def test_create_with_number_assigns_it_and_points_twilio_here(
    client, key, project, twilio_standin, app
):
    sid = twilio_standin.add_incoming_number(NUMBER)
    agent = await create_agent(client, key, project, phoneNumber="+1 (415) 555-0100")
    assert agent["phoneNumber"] == NUMBER
    updates = twilio_standin.requests_to(f"/IncomingPhoneNumbers/{sid}.json", "POST")
    assert len(updates) == 1
    assert updates[0].param("VoiceUrl") == "https://talkstack.test/twilio/voice/inbound"
    assert updates[0].param("VoiceMethod") == "POST"


async def test_create_with_foreign_number_creates_nothing(
    client, key, project, twilio_standin, app
):
    body = {"name": "J", "systemInstruction": "Hi", "projectId": project, "phoneNumber": NUMBER}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    assert_error(r, 400, "NUMBER_NOT_IN_ACCOUNT")
    assert await agent_count(app) == 0


async def test_create_with_invalid_number_never_asks_twilio(
    client, key, project, twilio_standin, app
):
    body = {"name": "J", "systemInstruction": "Hi", "projectId": project, "phoneNumber": "+1415555"}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PHONE_NUMBER"
    assert twilio_standin.requests == []
    assert await agent_count(app) == 0


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_number_without_twilio_is_503(client, key, project, app, settings_overrides):
    body = {"name": "J", "systemInstruction": "Hi", "projectId": project, "phoneNumber": NUMBER}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    body = assert_error(r, 503, "TWILIO_NOT_CONFIGURED")
    assert "TWILIO_ACCOUNT_SID" in body["message"] and "TWILIO_AUTH_TOKEN" in body["message"]
    assert await agent_count(app) == 0
    # Everything that does not need Twilio still works.
    await create_agent(client, key, project)


async def test_get_agent_bare_object(client, key, project):
    agent = await create_agent(client, key, project)
    r = await client.post(
        "/agent", json={"projectId": project, "agentId": agent["id"]}, headers=key
    )
    assert r.status_code == 200
    assert r.json() == agent


async def test_agent_in_another_project_is_404(client, key, project):
    agent = await create_agent(client, key, project)
    r = await client.post("/project/create-project", json={"name": "Other"}, headers=key)
    other = r.json()["data"]["id"]
    r = await client.post("/agent", json={"projectId": other, "agentId": agent["id"]}, headers=key)
    assert_error(r, 404, "AGENT_NOT_FOUND")


@pytest.mark.parametrize("agent_id", ["not-a-uuid", str(uuid.uuid4())])
async def test_an_unknown_project_is_404_whatever_the_agent_id(client, key, project, agent_id):
    agent = await create_agent(client, key, project)
    for pid, code in ((str(uuid.uuid4()), "PROJECT_NOT_FOUND"), (project, "AGENT_NOT_FOUND")):
        r = await client.post("/agent", json={"projectId": pid, "agentId": agent_id}, headers=key)
        assert_error(r, 404, code)
    r = await client.post(
        "/agent", json={"projectId": "not-a-uuid", "agentId": agent["id"]}, headers=key
    )
    assert_error(r, 404, "PROJECT_NOT_FOUND")


async def test_reading_an_agent_checks_its_project_in_the_same_query(client, key, project, app):
    agent = await create_agent(client, key, project)
    statements: list[str] = []
    engine = app.state.ctx.engine.sync_engine

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        r = await client.post(
            "/agent", json={"projectId": project, "agentId": agent["id"]}, headers=key
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert r.status_code == 200, r.text
    # The project and its agent in one query (the agent's number is another).
    assert len([s for s in statements if "FROM projects" in s or "FROM agents" in s]) == 1


async def test_update_agent(client, key, project, app):
    agent = await create_agent(client, key, project, firstMessage="Hi")
    r = await client.put(
        "/agent",
        json={
            "projectId": project,
            "agentId": agent["id"],
            "name": "Jill",
            "voice_id": VOICE,
            "firstMessage": None,
            "id": str(uuid.uuid4()),
            "projectIdx": "ignored",
        },
        headers=key,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agentId"] == body["id"] == agent["id"]
    assert body["name"] == "Jill" and body["voice_id"] == VOICE and body["firstMessage"] is None
    assert body["systemInstruction"] == agent["systemInstruction"]


async def test_update_nothing_is_400(client, key, project):
    agent = await create_agent(client, key, project)
    r = await client.put("/agent", json={"projectId": project, "agentId": agent["id"]}, headers=key)
    assert_error(r, 400, "NOTHING_TO_UPDATE")


async def test_update_bad_voice_changes_nothing(client, key, project, app):
    agent = await create_agent(client, key, project)
    r = await client.put(
        "/agent",
        json={"projectId": project, "agentId": agent["id"], "name": "New", "voice_id": "nope"},
        headers=key,
    )
    assert r.status_code == 400
    async with app.state.ctx.sessionmaker() as s:
        row = await s.get(Agent, uuid.UUID(agent["id"]))
        assert row is not None and row.name == "Jack"


async def test_delete_releases_number_and_active_agent(client, key, project, twilio_standin, app):
    twilio_standin.add_incoming_number(NUMBER)
    agent = await create_agent(client, key, project, phoneNumber=NUMBER)
    r = await client.patch(
        "/project/active-agent",
        json={"projectId": project, "active_agent": agent["id"]},
        headers=key,
    )
    assert r.status_code == 200
    r = await client.request(
        "DELETE", "/agent", json={"projectId": project, "agentId": agent["id"]}, headers=key
    )
    assert r.json() == {"message": "Agent Deleted", "status": "success"}
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.execute(select(PhoneNumber))).first() is None
        p = await s.get(Project, uuid.UUID(project))
        assert p is not None and p.active_agent_id is None
    r = await client.post(
        "/agent", json={"projectId": project, "agentId": agent["id"]}, headers=key
    )
    assert r.status_code == 404
    # The number is free again for another agent.
    await create_agent(client, key, project, name="Next", phoneNumber=NUMBER)


async def test_list_agents(client, key, project, twilio_standin):
    r = await client.get(f"/agent/{project}", headers=key)
    assert r.status_code == 200 and r.json() == []
    twilio_standin.add_incoming_number(NUMBER)
    a = await create_agent(client, key, project, name="A", phoneNumber=NUMBER)
    b = await create_agent(client, key, project, name="B")
    c = await create_agent(client, key, project, name="C")
    await client.request(
        "DELETE", "/agent", json={"projectId": project, "agentId": c["id"]}, headers=key
    )
    r = await client.get(f"/agent/{project}", headers=key)
    assert r.json() == [a, b]


async def test_list_unknown_project_404(client, key):
    assert_error(await client.get(f"/agent/{uuid.uuid4()}", headers=key), 404, "PROJECT_NOT_FOUND")


async def test_a_prompt_of_32000_characters_is_taken_and_one_more_is_400(client, key, project, app):
    prompt = ("You are Jack, a receptionist. " * 1100)[:31_999] + "."
    data = await create_agent(client, key, project, systemInstruction=prompt)
    assert len(data["systemInstruction"]) == 32_000
    body = {"name": "Jill", "systemInstruction": prompt + "!", "projectId": project}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    assert_validation_error(r, "systemInstruction")
    assert await agent_count(app) == 1


async def test_a_name_over_the_limit_is_400_and_creates_nothing(client, key, project, app):
    body = {"name": "J" * 201, "systemInstruction": "Hi", "projectId": project}
    r = await client.post("/agent/create-agent", json=body, headers=key)
    assert_validation_error(r, "name")
    assert await agent_count(app) == 0
