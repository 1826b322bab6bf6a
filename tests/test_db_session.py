"""The request-scoped session: commits on success, rolls back and releases on any error."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, update

from app.credentials import caller_by_api_key_hash, caller_by_id
from app.db import SQLITE_BUSY_TIMEOUT_MS, InlineSQLiteReader, point_reader
from app.models import Project, User
from app.security import sha256_hex
from tests.factories import api_key_for, get_user, make_project, verified_account


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


# --- point reads (the credential lookup) -------------------------------------------------------


async def _key_caller(app, key: str):
    return await caller_by_api_key_hash(point_reader(app.state.ctx.engine), sha256_hex(key))


async def test_a_point_read_gives_what_the_orm_reads(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    pid = await make_project(app, acct.user_id, "Active")
    r = await client.post("/user/set-active-project", json={"projectId": pid}, headers=acct.bearer)
    assert r.status_code == 200, r.text
    caller = await _key_caller(app, key)
    assert caller is not None
    async with app.state.ctx.sessionmaker() as s:
        user = await s.get(User, uuid.UUID(acct.user_id))
        project = await s.get(Project, uuid.UUID(pid))
        assert user is not None and project is not None
        assert (caller.id, caller.verified, caller.token_version) == (user.id, True, 0)
        assert caller.active_project is not None
        for field in dataclasses.fields(caller.active_project):
            assert getattr(caller.active_project, field.name) == getattr(project, field.name)
        assert caller.active_project.created_at.tzinfo is not None
    # The ORM user made from the same row, in a session: no query, and it writes back.
    async with app.state.ctx.sessionmaker() as s:
        attached = caller.user_in(s)
        assert inspect(attached).persistent
        assert {c.key: getattr(attached, c.key) for c in User.__table__.columns} == {
            c.key: getattr(user, c.key) for c in User.__table__.columns
        }
        attached.name = "Renamed"
        await s.commit()
    assert (await get_user(app, acct.email)).name == "Renamed"


async def test_a_point_read_of_nothing_is_none(app):
    assert await _key_caller(app, "no such key") is None
    assert await caller_by_id(point_reader(app.state.ctx.engine), uuid.uuid4()) is None


async def test_point_reads_leave_no_transaction_open(client, mailbox, app, database_url):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    assert await _key_caller(app, key) is not None
    engine = app.state.ctx.engine
    assert engine.pool.checkedout() == 0
    if database_url.startswith("sqlite"):
        # No read transaction left open: a checkpoint can reset the whole log (waiting only
        # for whatever the app's job worker may be doing at the time).
        # A job worker's poll can hold a read for a moment: only a read that stays open fails.
        for _ in range(40):
            with sqlite3.connect(engine.url.database, timeout=5) as other:
                busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0:
                break
            await asyncio.sleep(0.05)
        assert busy == 0
    else:
        # The pooled connection went back in its usual isolation level: transactions still
        # roll back.
        async with app.state.ctx.sessionmaker() as s:
            await s.execute(update(User).values(name="Rolled back"))
            await s.rollback()
        assert (await get_user(app, acct.email)).name != "Rolled back"


async def test_sqlite_point_reads_do_not_wait_on_the_event_loop(
    client, mailbox, app, database_url, monkeypatch
):
    """SQLite says "busy": the inline connection does not wait, the read is done again in a
    thread, on a connection that waits."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only")
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    reader = point_reader(app.state.ctx.engine)
    assert isinstance(reader, InlineSQLiteReader)
    connect = reader._connect
    waits: list[int] = []

    class Busy:
        def execute(self, *args: Any) -> Any:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise error

        def close(self) -> None:
            pass

    def flaky_connect(*, busy_timeout_ms: int) -> Any:
        waits.append(busy_timeout_ms)
        return Busy() if busy_timeout_ms == 0 else connect(busy_timeout_ms=busy_timeout_ms)

    reader.close()
    monkeypatch.setattr(reader, "_connect", flaky_connect)
    caller = await _key_caller(app, key)
    assert caller is not None and str(caller.id) == acct.user_id
    assert waits == [0, SQLITE_BUSY_TIMEOUT_MS]
    # Other errors are not retried.
    monkeypatch.setattr(reader, "_connect", lambda **_: sqlite3.connect(":memory:"))
    with pytest.raises(sqlite3.OperationalError):
        await _key_caller(app, key)


async def test_the_sqlite_point_reader_closes_with_its_engine(app, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only")
    engine = app.state.ctx.engine
    reader = point_reader(engine)
    assert point_reader(engine) is reader
    assert await _key_caller(app, "x") is None
    assert isinstance(reader, InlineSQLiteReader) and reader._conn is not None
    await engine.dispose()
    assert reader._conn is None
    assert await _key_caller(app, "x") is None  # and opens again if used after
