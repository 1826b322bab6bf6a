"""POST /auth/change-password, /auth/forgot-password and /auth/reset-password."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.models import PasswordResetToken, User
from app.security import sha256_hex
from tests.factories import (
    PASSWORD,
    Account,
    api_key_for,
    assert_error,
    assert_validation_error,
    count_rows,
    db_update,
    get_user,
    is_authenticated,
    login,
    past,
    refresh_rows,
    reset_rows,
    unverified_account,
    verified_account,
)
from tests.mailbox import Mailbox

NEW_PASSWORD = "a brand new password"
_FORGOT = {
    "message": "If the email is registered, a reset link has been sent.",
    "status": "success",
}


async def _change(client: Any, headers: dict[str, str], old: str, new: str) -> Any:
    return await client.post(
        "/auth/change-password", json={"oldPassword": old, "newPassword": new}, headers=headers
    )


async def _forgot(client: Any, email: str) -> Any:
    return await client.post("/auth/forgot-password", json={"email": email})


async def _reset(client: Any, token: str, new: str = NEW_PASSWORD) -> Any:
    return await client.post("/auth/reset-password", json={"token": token, "newPassword": new})


async def _assert_all_sessions_ended(client: Any, app: Any, acct: Account) -> None:
    """The old access token, and every refresh token, stopped working."""
    assert not await is_authenticated(client, acct.bearer)
    assert all(r.revoked_at is not None for r in await refresh_rows(app, acct.user_id))
    r = await client.post("/auth/refresh-token", json={"refreshToken": acct.refresh_token})
    assert r.status_code == 401


async def _assert_password_is(client: Any, email: str, new: str, old: str) -> None:
    assert (await login(client, email, new)).status_code == 200
    assert (await login(client, email, old)).status_code == 401


# --- change-password ---------------------------------------------------------------------------


async def test_change_password_with_a_bearer_token(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    second = (await login(client, acct.email)).json()  # another live session
    before = await get_user(app, acct.email)
    r = await _change(client, acct.bearer, PASSWORD, NEW_PASSWORD)
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "successfully updated password.", "status": "success"}

    after = await get_user(app, acct.email)
    assert after.password_hash != before.password_hash
    assert after.password_hash.startswith("$argon2id$")
    assert after.token_version == before.token_version + 1
    await _assert_all_sessions_ended(client, app, acct)
    assert not await is_authenticated(client, {"Authorization": f"Bearer {second['token']}"})
    r = await client.post("/auth/refresh-token", json={"refreshToken": second["refreshToken"]})
    assert r.status_code == 401
    await _assert_password_is(client, acct.email, NEW_PASSWORD, PASSWORD)


async def test_change_password_with_an_api_key(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    r = await _change(client, {"x-api-key": key}, PASSWORD, NEW_PASSWORD)
    assert r.status_code == 200, r.text
    await _assert_all_sessions_ended(client, app, acct)
    await _assert_password_is(client, acct.email, NEW_PASSWORD, PASSWORD)


async def test_change_password_with_a_wrong_old_password_changes_nothing(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    before = await get_user(app, acct.email)
    r = await _change(client, acct.bearer, "not the password", NEW_PASSWORD)
    assert_error(r, 401, "WRONG_PASSWORD")
    after = await get_user(app, acct.email)
    assert after.password_hash == before.password_hash
    assert after.token_version == before.token_version
    assert all(r.revoked_at is None for r in await refresh_rows(app, acct.user_id))
    assert await is_authenticated(client, acct.bearer)
    await _assert_password_is(client, acct.email, PASSWORD, NEW_PASSWORD)


async def test_change_password_voids_the_reset_links_sent_before(client, mailbox, app):
    """A link mailed before the change must not undo it (someone who read the mail, or the
    user who changed the password because the mailbox leaked)."""
    acct = await verified_account(client, mailbox)
    token = await _reset_token(client, mailbox, acct.email)
    assert (await _change(client, acct.bearer, PASSWORD, NEW_PASSWORD)).status_code == 200
    assert_error(await _reset(client, token, "attacker password"), 400, "INVALID_RESET_TOKEN")
    await _assert_password_is(client, acct.email, NEW_PASSWORD, "attacker password")
    [row] = await reset_rows(app, acct.user_id)
    assert row.used_at is not None


async def test_change_password_needs_a_credential(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    r = await _change(client, {}, PASSWORD, NEW_PASSWORD)
    assert_error(r, 401, "UNAUTHORIZED")
    await _assert_password_is(client, acct.email, PASSWORD, NEW_PASSWORD)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"newPassword": NEW_PASSWORD}, "oldPassword"),
        ({"oldPassword": PASSWORD}, "newPassword"),
        ({"oldPassword": PASSWORD, "newPassword": "short"}, "newPassword"),
        ({"oldPassword": PASSWORD, "newPassword": "n" * 129}, "newPassword"),
        ({"oldPassword": "", "newPassword": NEW_PASSWORD}, "oldPassword"),
        ({"oldPassword": PASSWORD, "newPassword": 123456789}, "newPassword"),
    ],
)
async def test_change_password_rejects_bad_fields(client, mailbox, app, payload, field):
    acct = await verified_account(client, mailbox)
    r = await client.post("/auth/change-password", json=payload, headers=acct.bearer)
    assert_validation_error(r, field)
    assert await is_authenticated(client, acct.bearer)


# --- forgot-password ---------------------------------------------------------------------------


async def test_forgot_password_emails_a_link_and_stores_only_a_hash(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    mailbox.clear()
    r = await _forgot(client, acct.email.upper())
    assert r.status_code == 200, r.text
    assert r.json() == _FORGOT

    [mail] = mailbox.to(acct.email)
    token = mailbox.last_reset_token(acct.email)
    assert f"https://talkstack.test/reset-password?token={token}" in mail.body
    assert len(token) >= 32

    [row] = await reset_rows(app, acct.user_id)
    assert row.token_hash == sha256_hex(token)
    assert token not in row.token_hash
    assert row.used_at is None
    assert timedelta(minutes=59) < row.expires_at - datetime.now(UTC) <= timedelta(hours=1)


async def test_forgot_password_answers_the_same_for_an_unknown_email(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    mailbox.clear()
    known = await _forgot(client, acct.email)
    unknown = await _forgot(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.json() == unknown.json() == _FORGOT
    assert mailbox.to("nobody@example.com") == []
    assert len(mailbox.messages) == 1
    assert await count_rows(app, PasswordResetToken) == 1


@pytest.mark.parametrize("payload", [{}, {"email": ""}, {"email": "nope"}, {"email": 1}])
async def test_forgot_password_rejects_a_malformed_email(client, mailbox, app, payload):
    assert_validation_error(await client.post("/auth/forgot-password", json=payload), "email")
    assert mailbox.messages == []


# --- reset-password ----------------------------------------------------------------------------


def _link_token(body: str) -> str:
    match = re.search(r"/reset-password\?token=([A-Za-z0-9_\-]+)", body)
    assert match, body
    return match.group(1)


async def _reset_token(client: Any, mailbox: Mailbox, email: str) -> str:
    assert (await _forgot(client, email)).status_code == 200
    return mailbox.last_reset_token(email)


async def test_reset_password_works_once(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    before = await get_user(app, acct.email)
    token = await _reset_token(client, mailbox, acct.email)

    r = await _reset(client, token)
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Password has been reset successfully.", "status": "success"}
    after = await get_user(app, acct.email)
    assert after.password_hash != before.password_hash
    assert after.token_version == before.token_version + 1
    [row] = await reset_rows(app, acct.user_id)
    assert row.used_at is not None
    await _assert_all_sessions_ended(client, app, acct)
    await _assert_password_is(client, acct.email, NEW_PASSWORD, PASSWORD)

    # The link is single use.
    r = await _reset(client, token, "yet another password")
    assert_error(r, 400, "INVALID_RESET_TOKEN")
    await _assert_password_is(client, acct.email, NEW_PASSWORD, "yet another password")


async def test_reset_password_with_an_expired_token(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    token = await _reset_token(client, mailbox, acct.email)
    await db_update(
        app,
        PasswordResetToken,
        PasswordResetToken.token_hash == sha256_hex(token),
        expires_at=past(),
    )
    assert_error(await _reset(client, token), 400, "INVALID_RESET_TOKEN")
    [row] = await reset_rows(app, acct.user_id)
    assert row.used_at is None
    assert await is_authenticated(client, acct.bearer)
    await _assert_password_is(client, acct.email, PASSWORD, NEW_PASSWORD)


@pytest.mark.parametrize("token", ["garbage", "x" * 512])
async def test_reset_password_with_an_unknown_token(client, mailbox, app, token):
    acct = await verified_account(client, mailbox)
    assert_error(await _reset(client, token), 400, "INVALID_RESET_TOKEN")
    await _assert_password_is(client, acct.email, PASSWORD, NEW_PASSWORD)


async def test_a_second_forgot_password_voids_the_first_link(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    first = await _reset_token(client, mailbox, acct.email)
    second = await _reset_token(client, mailbox, acct.email)
    assert first != second
    assert_error(await _reset(client, first), 400, "INVALID_RESET_TOKEN")
    await _assert_password_is(client, acct.email, PASSWORD, NEW_PASSWORD)
    assert (await _reset(client, second)).status_code == 200
    await _assert_password_is(client, acct.email, NEW_PASSWORD, PASSWORD)


async def test_concurrent_forgot_password_leaves_only_the_newest_link_valid(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    mailbox.clear()
    results = await asyncio.gather(*(_forgot(client, acct.email) for _ in range(6)))
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
    tokens = [_link_token(m.body) for m in mailbox.to(acct.email)]
    assert len(set(tokens)) == 6

    rows = await reset_rows(app, acct.user_id)
    live = [row for row in rows if row.used_at is None]
    assert len(live) == 1, f"{len(live)} of {len(rows)} reset links are live"
    # The live one is the newest: each request voided every link made before it.
    assert live[0].created_at == max(row.created_at for row in rows)
    [newest] = [t for t in tokens if sha256_hex(t) == live[0].token_hash]
    for stale in tokens:
        if stale != newest:
            assert_error(
                await _reset(client, stale, "stale link password"), 400, "INVALID_RESET_TOKEN"
            )
    await _assert_password_is(client, acct.email, PASSWORD, "stale link password")
    assert (await _reset(client, newest)).status_code == 200
    await _assert_password_is(client, acct.email, NEW_PASSWORD, PASSWORD)


async def test_reset_password_voids_every_other_outstanding_link(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    first = await _reset_token(client, mailbox, acct.email)
    second = await _reset_token(client, mailbox, acct.email)
    # Two live links at once, behind the API's back (as a race once could leave them).
    await db_update(
        app,
        PasswordResetToken,
        PasswordResetToken.token_hash == sha256_hex(first),
        used_at=None,
    )
    assert (await _reset(client, second)).status_code == 200
    assert_error(await _reset(client, first, "attacker password"), 400, "INVALID_RESET_TOKEN")
    await _assert_password_is(client, acct.email, NEW_PASSWORD, "attacker password")
    assert all(row.used_at is not None for row in await reset_rows(app, acct.user_id))


async def test_concurrent_forgot_reset_and_change_password_take_turns(client, mailbox, app):
    """They lock the user first, then its links, in the same order: no deadlock, no 500, and
    afterwards at most one link is live."""
    acct = await verified_account(client, mailbox)
    token = await _reset_token(client, mailbox, acct.email)
    results = await asyncio.gather(
        _forgot(client, acct.email),
        _reset(client, token, "reset password one"),
        _change(client, acct.bearer, PASSWORD, "changed password"),
        _forgot(client, acct.email),
    )
    statuses = [r.status_code for r in results]
    assert statuses[0] == statuses[3] == 200, [r.text for r in results]
    assert statuses[1] in (200, 400) and statuses[2] in (200, 401), [r.text for r in results]
    rows = await reset_rows(app, acct.user_id)
    assert len([row for row in rows if row.used_at is None]) <= 1


async def test_reset_password_with_a_bad_new_password_keeps_the_link(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    token = await _reset_token(client, mailbox, acct.email)
    assert_validation_error(await _reset(client, token, "short"), "newPassword")
    [row] = await reset_rows(app, acct.user_id)
    assert row.used_at is None
    assert (await _reset(client, token)).status_code == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"newPassword": NEW_PASSWORD}, "token"),
        ({"token": "abc"}, "newPassword"),
        ({"token": "", "newPassword": NEW_PASSWORD}, "token"),
        ({"token": "x" * 513, "newPassword": NEW_PASSWORD}, "token"),
    ],
)
async def test_reset_password_rejects_bad_fields(client, payload, field):
    assert_validation_error(await client.post("/auth/reset-password", json=payload), field)


async def test_forgot_and_reset_for_an_unverified_account(client, mailbox, app):
    """A reset proves the mailbox too, but it does not verify the account by itself."""
    email, _ = await unverified_account(client, mailbox)
    token = await _reset_token(client, mailbox, email)
    assert (await _reset(client, token)).status_code == 200
    user = await get_user(app, email)
    assert user.verified is False
    assert await app.state.ctx.hasher.verify(NEW_PASSWORD, user.password_hash)
    r = await login(client, email, NEW_PASSWORD)
    assert_error(r, 403, "EMAIL_NOT_VERIFIED", loginStatus=2)
    assert await count_rows(app, User) == 1


async def test_concurrent_resets_with_one_token_let_exactly_one_through(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    token = await _reset_token(client, mailbox, acct.email)
    results = await asyncio.gather(
        _reset(client, token, "first new password"), _reset(client, token, "second new password")
    )
    assert sorted(r.status_code for r in results) == [200, 400], [r.text for r in results]
    winner = "first new password" if results[0].status_code == 200 else "second new password"
    loser = "second new password" if winner == "first new password" else "first new password"
    await _assert_password_is(client, acct.email, winner, loser)


async def test_change_password_while_its_login_refreshes_ends_that_session_too(
    client, mailbox, app
):
    """Whichever runs first, no refresh token outlives the password change (and on PostgreSQL
    the two lock in an order that cannot deadlock)."""
    acct = await verified_account(client, mailbox)
    old = PASSWORD
    for attempt in range(5):
        new = f"new password {attempt}"
        fresh = (await login(client, acct.email, old)).json()
        changed, refreshed = await asyncio.gather(
            _change(client, {"Authorization": f"Bearer {fresh['token']}"}, old, new),
            client.post("/auth/refresh-token", json={"refreshToken": fresh["refreshToken"]}),
        )
        assert changed.status_code == 200, changed.text
        assert refreshed.status_code in (200, 401), refreshed.text
        assert all(r.revoked_at is not None for r in await refresh_rows(app, acct.user_id))
        if refreshed.status_code == 200:
            token = refreshed.json()["refreshToken"]
            r = await client.post("/auth/refresh-token", json={"refreshToken": token})
            assert r.status_code == 401, r.text
        old = new
