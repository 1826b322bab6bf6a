"""Projects: create, list, get, update, delete (cascade), webhook URL, active agent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from app.models import Agent, PhoneNumber, Project
from tests.factories import (
    api_key_for,
    assert_error,
    assert_validation_error,
    parse_iso_ms,
    verified_account,
)

PUBLIC_URL = "https://93.184.216.34/talkstack/events"


@pytest.fixture
async def alice(client, mailbox) -> dict[str, str]:
    acct = await verified_account(client, mailbox)
    return {"x-api-key": await api_key_for(client, acct), "user_id": acct.user_id}


@pytest.fixture
async def bob(client, mailbox) -> dict[str, str]:
    acct = await verified_account(client, mailbox)
    return {"x-api-key": await api_key_for(client, acct), "user_id": acct.user_id}


def auth(who: dict[str, str]) -> dict[str, str]:
    return {"x-api-key": who["x-api-key"]}


async def create(client, who, name="Clinic", **extra: Any) -> dict[str, Any]:
    r = await client.post(
        "/project/create-project", json={"name": name, **extra}, headers=auth(who)
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


async def project_row(app, pid: str) -> Project:
    async with app.state.ctx.sessionmaker() as s:
        row = await s.get(Project, uuid.UUID(pid))
        assert row is not None
        return row


async def test_create_project_shape(client, alice):
    r = await client.post(
        "/project/create-project",
        json={"name": "  Demo  ", "description": "This is a demo project."},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "successfully created project."
    assert body["status"] == "success"
    data = body["data"]
    assert set(data) == {
        "id", "name", "description", "user_id", "status", "is_deleted",
        "call_status_webhook", "active_agent", "created_at", "updated_at",
    }  # fmt: skip
    assert uuid.UUID(data["id"]).version == 4
    assert data["name"] == "Demo"
    assert data["user_id"] == alice["user_id"]
    assert data["status"] == "ACTIVE" and data["is_deleted"] is False
    assert data["call_status_webhook"] is None and data["active_agent"] is None
    parse_iso_ms(data["created_at"])
    assert "webhookSecret" not in body


async def test_description_defaults_to_empty(client, alice):
    assert (await create(client, alice))["description"] == ""


async def test_duplicate_live_name_is_409_and_deleted_name_is_free(client, alice, app):
    p = await create(client, alice, "Same")
    r = await client.post("/project/create-project", json={"name": "Same"}, headers=auth(alice))
    assert_error(r, 409, "PROJECT_NAME_TAKEN")
    r = await client.delete(f"/project/{p['id']}", headers=auth(alice))
    assert r.status_code == 200, r.text
    again = await create(client, alice, "Same")
    assert again["id"] != p["id"]


async def test_names_are_per_user(client, alice, bob):
    await create(client, alice, "Shared")
    await create(client, bob, "Shared")


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "description": ["x"]}, "description"),
    ],
)
async def test_create_bad_input(client, alice, app, body, field):
    r = await client.post("/project/create-project", json=body, headers=auth(alice))
    assert_validation_error(r, field)
    async with app.state.ctx.sessionmaker() as s:
        assert (await s.execute(select(Project))).first() is None


async def test_mass_assignment_is_ignored(client, alice, bob):
    data = await create(
        client,
        alice,
        "Mine",
        user_id=bob["user_id"],
        id=str(uuid.uuid4()),
        is_deleted=True,
        status="DELETED",
        call_status_webhook="http://127.0.0.1/x",
    )
    assert data["user_id"] == alice["user_id"]
    assert data["is_deleted"] is False and data["status"] == "ACTIVE"
    assert data["call_status_webhook"] is None


async def test_list_newest_first_live_only(client, alice, bob):
    a = await create(client, alice, "A")
    b = await create(client, alice, "B")
    c = await create(client, alice, "C")
    await create(client, bob, "Bob's")
    await client.delete(f"/project/{b['id']}", headers=auth(alice))
    r = await client.get("/project", headers=auth(alice))
    assert r.status_code == 200
    assert [p["id"] for p in r.json()["data"]] == [c["id"], a["id"]]


async def test_get_project(client, alice):
    p = await create(client, alice)
    r = await client.get(f"/project/{p['id']}", headers=auth(alice))
    assert r.status_code == 200
    assert r.json() == {
        "message": "successfully fetched project data.",
        "status": "success",
        "data": p,
    }


@pytest.mark.parametrize("pid", ["not-a-uuid", str(uuid.uuid4())])
async def test_get_unknown_project_404(client, alice, pid):
    assert_error(await client.get(f"/project/{pid}", headers=auth(alice)), 404, "PROJECT_NOT_FOUND")


async def test_update_fields_and_aliases(client, alice, app):
    p = await create(client, alice)
    r = await client.put(
        f"/project/{p['id']}", json={"name": "New", "description": "d"}, headers=auth(alice)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "successfully updated project info."
    assert body["data"]["name"] == "New" and body["data"]["description"] == "d"
    assert body.get("webhookSecret") is None
    for key in ("webhookUrl", "webhookURL"):
        r = await client.put(f"/project/{p['id']}", json={key: PUBLIC_URL}, headers=auth(alice))
        assert r.status_code == 200, r.text
        assert r.json()["data"]["call_status_webhook"] == PUBLIC_URL


async def test_update_nothing_is_400(client, alice):
    p = await create(client, alice)
    assert_error(
        await client.put(f"/project/{p['id']}", json={}, headers=auth(alice)),
        400,
        "NOTHING_TO_UPDATE",
    )


async def test_update_to_taken_name_is_409_and_changes_nothing(client, alice, app):
    await create(client, alice, "One")
    two = await create(client, alice, "Two")
    r = await client.put(
        f"/project/{two['id']}", json={"name": "One", "description": "changed"}, headers=auth(alice)
    )
    assert_error(r, 409, "PROJECT_NAME_TAKEN")
    row = await project_row(app, two["id"])
    assert row.name == "Two" and row.description == ""


async def test_webhook_secret_is_returned_once(client, alice, app):
    p = await create(client, alice)
    r = await client.post(
        "/project/call-status/add-webhookurl",
        json={"projectId": p["id"], "webhookURL": PUBLIC_URL},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "added webhook url."
    secret = body["webhookSecret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    r = await client.post(
        "/project/call-status/add-webhookurl",
        json={"projectId": p["id"], "webhookUrl": PUBLIC_URL + "/2"},
        headers=auth(alice),
    )
    assert r.status_code == 200 and r.json()["webhookSecret"] is None
    row = await project_row(app, p["id"])
    assert row.webhook_secret == secret
    assert row.call_status_webhook == PUBLIC_URL + "/2"


async def test_put_gives_secret_when_first_webhook(client, alice):
    p = await create(client, alice)
    r = await client.put(
        f"/project/{p['id']}", json={"webhookUrl": PUBLIC_URL}, headers=auth(alice)
    )
    assert r.json()["webhookSecret"].startswith("whsec_")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/x",
        "javascript:alert(1)",
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://user:pw@93.184.216.34/hook",
        "https:///nohost",
        "https://" + "a" * 2050 + ".com/",
        "not a url",
    ],
)
async def test_webhook_url_refused(client, alice, app, url):
    p = await create(client, alice)
    r = await client.post(
        "/project/call-status/add-webhookurl",
        json={"projectId": p["id"], "webhookURL": url},
        headers=auth(alice),
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] in ("INVALID_WEBHOOK_URL", "VALIDATION_ERROR")
    row = await project_row(app, p["id"])
    assert row.call_status_webhook is None and row.webhook_secret is None


@pytest.mark.parametrize("settings_overrides", [{"webhook_allow_private_hosts": True}])
async def test_private_webhook_allowed_when_configured(client, alice, settings_overrides):
    p = await create(client, alice)
    r = await client.post(
        "/project/call-status/add-webhookurl",
        json={"projectId": p["id"], "webhookURL": "http://127.0.0.1:9/hook"},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text


async def test_delete_soft_and_404_afterwards(client, alice, app):
    p = await create(client, alice)
    r = await client.post(
        "/user/set-active-project", json={"projectId": p["id"]}, headers=auth(alice)
    )
    assert r.status_code == 200
    r = await client.delete(f"/project/{p['id']}", headers=auth(alice))
    assert r.status_code == 200
    assert r.json() == {"message": "successfully deleted project.", "status": "success"}
    row = await project_row(app, p["id"])
    assert row.is_deleted and row.deleted_at is not None
    assert_error(
        await client.get(f"/project/{p['id']}", headers=auth(alice)), 404, "PROJECT_NOT_FOUND"
    )
    assert_error(
        await client.delete(f"/project/{p['id']}", headers=auth(alice)), 404, "PROJECT_NOT_FOUND"
    )
    r = await client.get("/user/get-active-project", headers=auth(alice))
    assert r.status_code == 404


async def _agent(app, pid: str, name: str = "Jack") -> str:
    async with app.state.ctx.sessionmaker() as s:
        agent = Agent(project_id=uuid.UUID(pid), name=name, system_instruction="Hi", voice_id="v")
        s.add(agent)
        await s.commit()
        return str(agent.id)


async def test_delete_with_agents_needs_cascade(client, alice, app):
    p = await create(client, alice)
    aid = await _agent(app, p["id"])
    async with app.state.ctx.sessionmaker() as s:
        s.add(
            PhoneNumber(
                e164="+14155550100",
                user_id=uuid.UUID(alice["user_id"]),
                project_id=uuid.UUID(p["id"]),
                agent_id=uuid.UUID(aid),
                twilio_kind="incoming",
                twilio_sid="PN" + "0" * 32,
            )
        )
        await s.commit()
    r = await client.delete(f"/project/{p['id']}", headers=auth(alice))
    body = assert_error(r, 409, "PROJECT_NOT_EMPTY", agents=1, phoneNumbers=1)
    assert "1 agent" in body["message"] and "1 phone number" in body["message"]
    assert not (await project_row(app, p["id"])).is_deleted
    r = await client.request(
        "DELETE", f"/project/{p['id']}", json={"cascade": True}, headers=auth(alice)
    )
    assert r.status_code == 200, r.text
    async with app.state.ctx.sessionmaker() as s:
        agent = await s.get(Agent, uuid.UUID(aid))
        assert agent is not None and agent.is_deleted
        assert (await s.execute(select(PhoneNumber))).first() is None


async def test_active_agent_get_set_remove(client, alice, app):
    p = await create(client, alice)
    aid = await _agent(app, p["id"])
    r = await client.post("/project/active-agent", json={"projectId": p["id"]}, headers=auth(alice))
    assert_error(r, 404, "NO_ACTIVE_AGENT")
    r = await client.patch(
        "/project/active-agent",
        json={"projectId": p["id"], "active_agent": aid},
        headers=auth(alice),
    )
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "updated active agent successfully."
    assert r.json()["project"]["active_agent"] == aid
    r = await client.post("/project/active-agent", json={"projectId": p["id"]}, headers=auth(alice))
    assert r.status_code == 200 and r.json()["active_agent"] == aid
    r = await client.patch(f"/project/active-agent/{aid}", headers=auth(alice))
    assert r.json() == {
        "message": "Removed active agent from project successfully.",
        "status": "success",
    }
    assert (await project_row(app, p["id"])).active_agent_id is None
    assert_error(
        await client.patch(f"/project/active-agent/{aid}", headers=auth(alice)),
        404,
        "NOT_ACTIVE_AGENT",
    )


async def test_active_agent_must_belong_to_project(client, alice, app):
    p1 = await create(client, alice, "P1")
    p2 = await create(client, alice, "P2")
    other = await _agent(app, p2["id"])
    r = await client.patch(
        "/project/active-agent",
        json={"projectId": p1["id"], "active_agent": other},
        headers=auth(alice),
    )
    assert_error(r, 404, "AGENT_NOT_FOUND")
    assert (await project_row(app, p1["id"])).active_agent_id is None


async def test_other_users_project_is_invisible(client, alice, bob, app):
    p = await create(client, alice)
    aid = await _agent(app, p["id"])
    pid = p["id"]
    attempts = [
        client.get(f"/project/{pid}", headers=auth(bob)),
        client.put(
            f"/project/{pid}", json={"name": "pwned", "webhookUrl": PUBLIC_URL}, headers=auth(bob)
        ),
        client.request("DELETE", f"/project/{pid}", json={"cascade": True}, headers=auth(bob)),
        client.post(
            "/project/call-status/add-webhookurl",
            json={"projectId": pid, "webhookURL": PUBLIC_URL},
            headers=auth(bob),
        ),
        client.post("/project/active-agent", json={"projectId": pid}, headers=auth(bob)),
        client.patch(
            "/project/active-agent", json={"projectId": pid, "active_agent": aid}, headers=auth(bob)
        ),
        client.post("/user/set-active-project", json={"projectId": pid}, headers=auth(bob)),
    ]
    for call in attempts:
        r = await call
        assert r.status_code == 404, r.text
    row = await project_row(app, pid)
    assert row.name == "Clinic" and not row.is_deleted
    assert row.call_status_webhook is None and row.active_agent_id is None
    r = await client.get("/project", headers=auth(bob))
    assert r.json()["data"] == []
