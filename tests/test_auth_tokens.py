"""POST /auth/refresh-token: rotation, single use, reuse detection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import RefreshToken
from app.security import sha256_hex
from tests.factories import (
    assert_error,
    assert_validation_error,
    db_update,
    is_authenticated,
    login,
    parse_iso_ms,
    past,
    refresh_rows,
    verified_account,
)


async def _refresh(client: Any, token: str) -> Any:
    return await client.post("/auth/refresh-token", json={"refreshToken": token})


async def test_refresh_returns_a_new_pair(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    r = await _refresh(client, acct.refresh_token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "message",
        "status",
        "token",
        "refreshToken",
        "resfreshToken",
        "expirationTime",
    }
    assert body["status"] == "success"
    assert body["message"]
    # Talkstack's documented misspelling carries the same value.
    assert body["resfreshToken"] == body["refreshToken"]
    assert body["refreshToken"] != acct.refresh_token
    assert body["token"] != acct.token
    expires = parse_iso_ms(body["expirationTime"])
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=2))) < timedelta(minutes=1)
    assert await is_authenticated(client, {"Authorization": f"Bearer {body['token']}"})

    old, new = await refresh_rows(app, acct.user_id)
    assert old.token_hash == sha256_hex(acct.refresh_token)
    assert old.used_at is not None and old.revoked_at is None
    assert new.token_hash == sha256_hex(body["refreshToken"])
    assert new.family_id == old.family_id
    assert new.used_at is None and new.revoked_at is None
    assert timedelta(days=29) < new.expires_at - datetime.now(UTC) <= timedelta(days=30)

    # The new refresh token rotates in turn.
    r = await _refresh(client, body["refreshToken"])
    assert r.status_code == 200, r.text


async def test_reusing_a_refresh_token_revokes_its_whole_family(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    other = (await login(client, acct.email)).json()  # a second, unrelated login

    rotated = (await _refresh(client, acct.refresh_token)).json()
    r = await _refresh(client, acct.refresh_token)
    body = assert_error(r, 401, "REFRESH_TOKEN_REUSED")
    assert "log in again" in body["message"].lower()

    # The newer token of the same family died with it.
    assert_error(await _refresh(client, rotated["refreshToken"]), 401, "INVALID_REFRESH_TOKEN")
    # And the old one stays dead (no second reuse alarm needed).
    assert (await _refresh(client, acct.refresh_token)).status_code == 401

    rows = await refresh_rows(app, acct.user_id)
    family = rows[0].family_id
    assert all(r.revoked_at is not None for r in rows if r.family_id == family)
    # The other login's family is untouched and still refreshes.
    others = [r for r in rows if r.family_id != family]
    assert [r.token_hash for r in others] == [sha256_hex(other["refreshToken"])]
    assert others[0].revoked_at is None and others[0].used_at is None
    assert (await _refresh(client, other["refreshToken"])).status_code == 200


async def test_reuse_does_not_touch_another_users_tokens(client, mailbox, app):
    ada = await verified_account(client, mailbox)
    bob = await verified_account(client, mailbox)
    await _refresh(client, ada.refresh_token)
    assert (await _refresh(client, ada.refresh_token)).status_code == 401
    assert (await _refresh(client, bob.refresh_token)).status_code == 200


@pytest.mark.parametrize("token", ["garbage", "x" * 512, "eyJhbGciOiJIUzI1NiJ9.e30.sig"])
async def test_an_unknown_refresh_token_is_401_and_changes_nothing(client, mailbox, app, token):
    acct = await verified_account(client, mailbox)
    assert_error(await _refresh(client, token), 401, "INVALID_REFRESH_TOKEN")
    [row] = await refresh_rows(app, acct.user_id)
    assert row.used_at is None and row.revoked_at is None


async def test_an_access_token_is_not_a_refresh_token(client, mailbox):
    acct = await verified_account(client, mailbox)
    assert_error(await _refresh(client, acct.token), 401, "INVALID_REFRESH_TOKEN")


async def test_an_expired_refresh_token_is_401(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    await db_update(
        app,
        RefreshToken,
        RefreshToken.token_hash == sha256_hex(acct.refresh_token),
        expires_at=past(1),
    )
    assert_error(await _refresh(client, acct.refresh_token), 401, "INVALID_REFRESH_TOKEN")
    [row] = await refresh_rows(app, acct.user_id)
    assert row.used_at is None


async def test_a_revoked_refresh_token_is_401(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    await db_update(
        app,
        RefreshToken,
        RefreshToken.token_hash == sha256_hex(acct.refresh_token),
        revoked_at=past(1),
    )
    assert_error(await _refresh(client, acct.refresh_token), 401, "INVALID_REFRESH_TOKEN")


@pytest.mark.parametrize(
    "payload", [{}, {"refreshToken": ""}, {"refreshToken": 5}, {"refreshToken": "x" * 513}]
)
async def test_refresh_rejects_bad_fields(client, payload):
    assert_validation_error(await client.post("/auth/refresh-token", json=payload), "refreshToken")


async def test_concurrent_refreshes_of_one_token_let_exactly_one_through(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    results = await asyncio.gather(*(_refresh(client, acct.refresh_token) for _ in range(2)))
    assert sorted(r.status_code for r in results) == [200, 401], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 401)
    assert loser.json()["code"] == "REFRESH_TOKEN_REUSED"
    # Exactly one new token was issued for the family.
    rows = await refresh_rows(app, acct.user_id)
    assert len(rows) == 2
