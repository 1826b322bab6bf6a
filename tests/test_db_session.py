"""The request-scoped session: commits on success, rolls back and releases on any error."""

from __future__ import annotations

from sqlalchemy import func, select

from app.models import Project
from tests.factories import api_key_for, verified_account


async def test_failed_request_rolls_back_and_releases_its_connection(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    headers = {"x-api-key": await api_key_for(client, acct)}
    r = await client.post("/project/create-project", json={"name": "P"}, headers=headers)
    pid = r.json()["data"]["id"]
    # A PUT that first changes the description, then fails on the name check.
    await client.post("/project/create-project", json={"name": "Q"}, headers=headers)
    r = await client.put(
        f"/project/{pid}", json={"description": "changed", "name": "Q"}, headers=headers
    )
    assert r.status_code == 409
    # Released at once (not when the garbage collector finds it), and nothing was written.
    assert app.state.ctx.engine.pool.checkedout() == 0
    async with app.state.ctx.sessionmaker() as s:
        assert (
            await s.execute(select(Project.description).where(Project.name == "P"))
        ).scalar() == ""
        assert (await s.execute(select(func.count()).select_from(Project))).scalar() == 2
