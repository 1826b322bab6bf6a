from __future__ import annotations

from tests.factories import api_key_for, make_project, verified_account


async def test_signup_verify_and_use_key(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    r = await client.get("/user/get-active-project", headers={"x-api-key": key})
    assert r.status_code == 404, r.text
    pid = await make_project(app, acct.user_id)
    r = await client.post(
        "/user/set-active-project", json={"projectId": pid}, headers={"x-api-key": key}
    )
    assert r.status_code == 200, r.text
    r = await client.get("/user/get-active-project", headers=acct.bearer)
    assert r.json()["projectData"]["id"] == pid
