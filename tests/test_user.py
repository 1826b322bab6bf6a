"""/user/set-active-project and /user/get-active-project."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.db import utcnow
from app.models import Project
from tests.factories import (
    PROJECT_KEYS,
    USER_KEYS,
    Account,
    api_key_for,
    assert_error,
    assert_validation_error,
    db_update,
    get_user,
    make_project,
    parse_iso_ms,
    verified_account,
)


async def _set(client: Any, acct: Account, project_id: Any) -> Any:
    return await client.post(
        "/user/set-active-project", json={"projectId": project_id}, headers=acct.bearer
    )


async def _active_id(app: Any, acct: Account) -> uuid.UUID | None:
    return (await get_user(app, acct.email)).active_project_id


async def test_set_active_project(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id, "Sales line")
    r = await _set(client, acct, pid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"message", "status", "userData", "projectData"}
    assert body["message"] == f"successfully set project with id {pid} active."
    assert body["status"] == "success"

    user = body["userData"]
    assert set(user) == USER_KEYS
    assert user["id"] == acct.user_id
    assert user["active_project"] == pid

    project = body["projectData"]
    assert set(project) == PROJECT_KEYS
    assert project == {
        "id": pid,
        "name": "Sales line",
        "description": "",
        "user_id": acct.user_id,
        "status": "ACTIVE",
        "is_deleted": False,
        "call_status_webhook": None,
        "active_agent": None,
        "created_at": project["created_at"],
        "updated_at": project["updated_at"],
    }
    parse_iso_ms(project["created_at"])
    parse_iso_ms(project["updated_at"])
    assert str(await _active_id(app, acct)) == pid


async def test_set_active_project_with_an_api_key_and_switching(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    first = await make_project(app, acct.user_id, "One")
    second = await make_project(app, acct.user_id, "Two")
    for pid in (first, second):
        r = await client.post(
            "/user/set-active-project", json={"projectId": pid}, headers={"x-api-key": key}
        )
        assert r.status_code == 200, r.text
        assert r.json()["userData"]["active_project"] == pid
    assert str(await _active_id(app, acct)) == second
    r = await client.get("/user/get-active-project", headers={"x-api-key": key})
    assert r.json()["projectData"]["id"] == second


async def test_set_active_project_accepts_an_upper_case_id(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id)
    r = await _set(client, acct, pid.upper())
    assert r.status_code == 200, r.text
    assert r.json()["projectData"]["id"] == pid


async def test_another_users_project_is_404_and_changes_nothing(client, mailbox, app):
    ada = await verified_account(client, mailbox)
    bob = await verified_account(client, mailbox)
    ada_pid = await make_project(app, ada.user_id, "Ada's")
    bob_pid = await make_project(app, bob.user_id, "Bob's")
    assert (await _set(client, ada, ada_pid)).status_code == 200
    before = await get_user(app, ada.email)

    r = await _set(client, ada, bob_pid)
    body = assert_error(r, 404, "PROJECT_NOT_FOUND")
    # Indistinguishable from a project that does not exist.
    missing = await _set(client, ada, str(uuid.uuid4()))
    assert missing.json() == body

    after = await get_user(app, ada.email)
    assert str(after.active_project_id) == ada_pid
    assert after.updated_at == before.updated_at
    assert (await get_user(app, bob.email)).active_project_id is None


@pytest.mark.parametrize("project_id", ["not-a-uuid", "1", "dce09491-e3c8-4c0b-bf01", " " * 3])
async def test_a_project_id_that_is_not_a_uuid_is_404(client, mailbox, app, project_id):
    acct = await verified_account(client, mailbox)
    assert_error(await _set(client, acct, project_id), 404, "PROJECT_NOT_FOUND")
    assert await _active_id(app, acct) is None


async def test_a_deleted_project_cannot_be_made_active(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id, is_deleted=True, deleted_at=utcnow())
    assert_error(await _set(client, acct, pid), 404, "PROJECT_NOT_FOUND")
    assert await _active_id(app, acct) is None


@pytest.mark.parametrize("payload", [{}, {"projectId": None}, {"projectId": 5}, {"projectId": []}])
async def test_set_active_project_rejects_bad_fields(client, mailbox, app, payload):
    acct = await verified_account(client, mailbox)
    r = await client.post("/user/set-active-project", json=payload, headers=acct.bearer)
    assert_validation_error(r, "projectId")


async def test_set_active_project_needs_a_credential(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id)
    r = await client.post("/user/set-active-project", json={"projectId": pid})
    assert_error(r, 401, "UNAUTHORIZED")
    assert await _active_id(app, acct) is None


async def test_get_active_project(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id, "Support")
    set_body = (await _set(client, acct, pid)).json()
    r = await client.get("/user/get-active-project", headers=acct.bearer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"message", "status", "projectData"}
    assert body["message"] == "fetched active project data."
    assert body["status"] == "success"
    assert body["projectData"] == set_body["projectData"]


async def test_get_active_project_when_none_is_set(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    await make_project(app, acct.user_id)
    r = await client.get("/user/get-active-project", headers=acct.bearer)
    assert_error(r, 404, "NO_ACTIVE_PROJECT")


async def test_get_active_project_after_it_was_deleted(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    pid = await make_project(app, acct.user_id)
    assert (await _set(client, acct, pid)).status_code == 200
    await db_update(
        app, Project, Project.id == uuid.UUID(pid), is_deleted=True, deleted_at=utcnow()
    )
    r = await client.get("/user/get-active-project", headers=acct.bearer)
    assert_error(r, 404, "NO_ACTIVE_PROJECT")


async def test_get_active_project_needs_a_credential(client):
    assert_error(await client.get("/user/get-active-project"), 401, "UNAUTHORIZED")
