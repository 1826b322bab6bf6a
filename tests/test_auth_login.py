"""POST /auth/login."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import RefreshToken
from app.security import PasswordHasher, sha256_hex
from tests.factories import (
    PASSWORD,
    USER_KEYS,
    assert_error,
    assert_validation_error,
    count_rows,
    is_authenticated,
    login,
    parse_iso_ms,
    refresh_rows,
    unverified_account,
    verified_account,
)

_INVALID = {
    "message": "invalid email or password",
    "status": "error",
    "code": "INVALID_CREDENTIALS",
    "loginStatus": 4,
}


class CountingHasher:
    """The app's own hasher, with every verify() recorded."""

    def __init__(self, inner: PasswordHasher) -> None:
        self.inner = inner
        self.verified: list[tuple[str, str | None]] = []

    async def hash(self, password: str) -> str:
        return await self.inner.hash(password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        self.verified.append((password, password_hash))
        return await self.inner.verify(password, password_hash)


@pytest.fixture
def hasher(app: Any) -> CountingHasher:
    counting = CountingHasher(app.state.ctx.hasher)
    app.state.ctx.hasher = counting
    return counting


async def test_login_returns_tokens_and_the_user(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    r = await login(client, acct.email)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "message",
        "status",
        "token",
        "refreshToken",
        "expirationTime",
        "user",
        "loginStatus",
    }
    assert body["message"] == "successfully logged in."
    assert body["status"] == "success"
    assert body["loginStatus"] == 7
    assert set(body["user"]) == USER_KEYS
    assert body["user"]["id"] == acct.user_id
    assert body["user"]["email"] == acct.email
    assert body["user"]["verified"] is True
    expires = parse_iso_ms(body["expirationTime"])
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=2))) < timedelta(minutes=1)

    assert await is_authenticated(client, {"Authorization": f"Bearer {body['token']}"})
    # Only the hash of the refresh token is stored, in a family of its own.
    rows = await refresh_rows(app, acct.user_id)
    assert len(rows) == 2
    assert rows[-1].token_hash == sha256_hex(body["refreshToken"])
    assert body["refreshToken"] not in {r.token_hash for r in rows}
    assert rows[0].family_id != rows[-1].family_id
    assert rows[-1].used_at is None and rows[-1].revoked_at is None


async def test_each_login_is_its_own_session(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    first = (await login(client, acct.email)).json()
    second = (await login(client, acct.email)).json()
    assert first["token"] != second["token"]
    assert first["refreshToken"] != second["refreshToken"]
    assert await is_authenticated(client, {"Authorization": f"Bearer {first['token']}"})
    assert await is_authenticated(client, {"Authorization": f"Bearer {second['token']}"})


async def test_login_email_is_case_insensitive(client, mailbox):
    acct = await verified_account(client, mailbox, "ada@example.com")
    r = await login(client, "ADA@Example.com", acct.password)
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email"] == "ada@example.com"


async def test_unknown_email_and_wrong_password_are_the_same_401(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    before = await count_rows(app, RefreshToken)
    unknown = await login(client, "nobody@example.com", PASSWORD)
    wrong = await login(client, acct.email, "not the password")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json() == _INVALID
    assert unknown.headers.get("content-type") == wrong.headers.get("content-type")
    assert await count_rows(app, RefreshToken) == before


async def test_the_password_is_case_sensitive(client, mailbox):
    acct = await verified_account(client, mailbox)
    r = await login(client, acct.email, acct.password.upper())
    assert r.status_code == 401
    assert r.json() == _INVALID


async def test_unknown_email_still_costs_a_password_verification(client, mailbox, app, hasher):
    """The unknown-email path verifies against a dummy hash, so timing does not tell."""
    acct = await verified_account(client, mailbox)
    hasher.verified.clear()
    assert (await login(client, "nobody@example.com", "some password")).status_code == 401
    assert len(hasher.verified) == 1
    assert hasher.verified[0] == ("some password", None)

    hasher.verified.clear()
    assert (await login(client, acct.email, "some password")).status_code == 401
    assert len(hasher.verified) == 1
    assert hasher.verified[0][1] is not None


async def test_the_dummy_verification_is_a_real_argon2_verification(app, monkeypatch):
    """PasswordHasher.verify(…, None) runs argon2 against its dummy hash and says no."""
    real: PasswordHasher = app.state.ctx.hasher
    seen: list[str] = []
    inner_verify = real._ctx.verify

    def spy(secret: str, hash: str) -> bool:
        seen.append(hash)
        result: bool = inner_verify(secret, hash)
        return result

    monkeypatch.setattr(real._ctx, "verify", spy)
    assert await real.verify("anything", None) is False
    assert len(seen) == 1 and seen[0].startswith("$argon2id$")


async def test_login_before_verifying_the_email_is_403(client, mailbox, app):
    email, _ = await unverified_account(client, mailbox)
    r = await login(client, email)
    assert_error(r, 403, "EMAIL_NOT_VERIFIED", loginStatus=2)
    assert await count_rows(app, RefreshToken) == 0


async def test_login_before_verifying_with_a_wrong_password_is_the_usual_401(client, mailbox):
    """Only the right password learns that the account is unverified."""
    email, _ = await unverified_account(client, mailbox)
    r = await login(client, email, "not the password")
    assert r.status_code == 401
    assert r.json() == _INVALID


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": PASSWORD}, "email"),
        ({"email": "ada@example.com"}, "password"),
        ({"email": "ada@example.com", "password": ""}, "password"),
        ({"email": "", "password": PASSWORD}, "email"),
        ({"email": "ada", "password": PASSWORD}, "email"),
        ({"email": "ada@example.com", "password": 12345678}, "password"),
        ({"email": "ada@example.com", "password": "p" * 129}, "password"),
    ],
)
async def test_login_rejects_bad_fields(client, mailbox, app, hasher, payload, field):
    assert_validation_error(await client.post("/auth/login", json=payload), field)
    assert hasher.verified == []


async def test_login_with_a_short_password_is_checked_not_refused(client, mailbox):
    """Passwords shorter than 8 are refused at signup, but login only says wrong or right."""
    acct = await verified_account(client, mailbox)
    r = await login(client, acct.email, "short")
    assert r.status_code == 401
    assert r.json() == _INVALID


async def test_a_login_racing_a_password_change_does_not_outlive_it(client, mailbox, app):
    """A login with the old password either ends with the change (it came first) or is
    refused (it came after): never a session that survives the change."""
    acct = await verified_account(client, mailbox)
    old = PASSWORD
    for attempt in range(5):
        new = f"new password {attempt}"
        logged_in, changed = await asyncio.gather(
            login(client, acct.email, old),
            client.post(
                "/auth/change-password",
                json={"oldPassword": old, "newPassword": new},
                headers=acct.bearer,
            ),
        )
        assert changed.status_code == 200, changed.text
        assert logged_in.status_code in (200, 401), logged_in.text
        assert all(r.revoked_at is not None for r in await refresh_rows(app, acct.user_id))
        if logged_in.status_code == 200:
            body = logged_in.json()
            assert not await is_authenticated(client, {"Authorization": f"Bearer {body['token']}"})
        old = new
        acct.token = (await login(client, acct.email, new)).json()["token"]
