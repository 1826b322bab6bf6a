"""POST /auth/signup, /auth/verify-email and /auth/resend-code."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.integrations.smtp import SmtpMailer
from app.models import RefreshToken, User
from app.security import sha256_hex
from tests.conftest import free_port
from tests.factories import (
    PASSWORD,
    USER_KEYS,
    assert_error,
    assert_validation_error,
    count_rows,
    db_update,
    fetch_user,
    get_user,
    is_authenticated,
    login,
    new_email,
    parse_iso_ms,
    past,
    refresh_rows,
    signup,
    unverified_account,
    verified_account,
)


def _other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def _verify(client: Any, email: str, code: str) -> Any:
    return await client.post("/auth/verify-email", json={"email": email, "code": code})


# --- signup ------------------------------------------------------------------------------------


async def test_signup_creates_an_unverified_user_and_emails_a_code(client, mailbox, app):
    before = datetime.now(UTC)
    r = await client.post(
        "/auth/signup",
        json={
            "email": "ada@example.com",
            "password": PASSWORD,
            "name": "Ada",
            "company_name": "AE",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # No tokens: an unverified account must not be usable (docs/differences.md).
    assert set(body) == {"message", "status", "user", "signupStatus"}
    assert body["message"] == "User registered successfully"
    assert body["status"] == "success"
    assert body["signupStatus"] == 3
    user = body["user"]
    assert set(user) == USER_KEYS
    assert uuid.UUID(user["id"]).version == 4
    assert user["email"] == "ada@example.com"
    assert user["name"] == "Ada"
    assert user["company_name"] == "AE"
    assert user["verified"] is False
    assert user["active_project"] is None
    created = parse_iso_ms(user["created_at"])
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    parse_iso_ms(user["updated_at"])

    mails = mailbox.to("ada@example.com")
    assert len(mails) == 1
    assert "verification code" in mails[0].subject.lower()
    code = mailbox.last_code("ada@example.com")

    row = await get_user(app, "ada@example.com")
    assert row.verification_code_hash is not None
    assert str(row.id) == user["id"]
    assert row.verified is False
    # The code is kept only as an HMAC: never the code itself, nor its plain SHA-256.
    assert row.verification_code_hash == app.state.ctx.signer.code_hash("ada@example.com", code)
    assert row.verification_code_hash != code
    assert row.verification_code_hash != sha256_hex(code)
    assert code not in row.verification_code_hash
    assert row.verification_failed_attempts == 0
    assert row.verification_code_expires_at is not None
    ttl = row.verification_code_expires_at - datetime.now(UTC)
    assert timedelta(minutes=14) < ttl <= timedelta(minutes=15)
    # The password is an argon2id hash, never the password.
    assert row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert await app.state.ctx.hasher.verify(PASSWORD, row.password_hash)
    assert not await app.state.ctx.hasher.verify("wrong password", row.password_hash)
    assert row.api_key_hash is None
    assert await count_rows(app, RefreshToken) == 0


async def test_signup_company_name_is_optional(client, mailbox, app):
    r = await signup(client, "bob@example.com")
    assert r.status_code == 200, r.text
    assert r.json()["user"]["company_name"] is None


async def test_signup_with_a_verified_email_is_refused_and_changes_nothing(client, mailbox, app):
    acct = await verified_account(client, mailbox, "ada@example.com")
    before = await get_user(app, acct.email)
    mailbox.clear()
    r = await signup(client, "ada@example.com", password="another password", name="Eve")
    assert_error(r, 400, "ACCOUNT_EXISTS", signupStatus=1)
    assert mailbox.to("ada@example.com") == []
    after = await get_user(app, acct.email)
    assert (after.name, after.password_hash, after.updated_at) == (
        before.name,
        before.password_hash,
        before.updated_at,
    )
    assert after.verification_code_hash is None


async def test_signup_again_before_verifying_sends_a_new_code_and_changes_nothing_else(
    client, mailbox, app
):
    email, old_code = await unverified_account(client, mailbox, "ada@example.com")
    before = await get_user(app, email)
    r = await signup(client, email, password="attacker password", name="Mallory")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert body["signupStatus"] == 2
    assert await count_rows(app, User) == 1

    after = await get_user(app, email)
    assert after.name == "Ada"
    assert after.password_hash == before.password_hash
    assert after.verification_code_hash != before.verification_code_hash
    assert len(mailbox.to(email)) == 2
    new_code = mailbox.last_code(email)

    # The first code died with the new one.
    if new_code != old_code:  # one chance in a million they coincide
        r = await _verify(client, email, old_code)
        assert_error(r, 400, "INVALID_CODE", verificationStatus=1)
    r = await _verify(client, email, new_code)
    assert r.status_code == 200, r.text
    # The original password is still the password.
    assert (await login(client, email, PASSWORD)).status_code == 200
    assert (await login(client, email, "attacker password")).status_code == 401


async def test_signup_again_before_verifying_reveals_nothing_of_the_first_signup(
    client, mailbox, app
):
    """Whoever types a pending email again learns that it is pending (signupStatus 2, as
    docs/api/auth.md decides) and nothing else: not the first signup's name, company, id or
    dates, and they cannot change any of it."""
    first = await client.post(
        "/auth/signup",
        json={
            "email": "ada@example.com",
            "password": PASSWORD,
            "name": "Ada Lovelace",
            "company_name": "Analytical Engines",
        },
    )
    assert first.status_code == 200, first.text
    before = await get_user(app, "ada@example.com")

    r = await client.post(
        "/auth/signup",
        json={
            "email": "ada@example.com",
            "password": "attacker password",
            "name": "Mallory",
            "company_name": "Mallory Inc",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "message": "Email already registered but not verified; a new verification code has "
        "been sent.",
        "status": "success",
        "user": None,
        "signupStatus": 2,
    }
    for secret in ("Ada Lovelace", "Analytical Engines", str(before.id)):
        assert secret not in r.text

    after = await get_user(app, "ada@example.com")
    assert (after.name, after.company_name, after.password_hash, after.verified) == (
        "Ada Lovelace",
        "Analytical Engines",
        before.password_hash,
        False,
    )
    # The new code goes to the mailbox of the email, as any resend would.
    assert len(mailbox.to("ada@example.com")) == 2


async def test_signup_email_is_case_insensitive(client, mailbox, app):
    r = await signup(client, "Ada.Lovelace@Example.COM")
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email"] == "ada.lovelace@example.com"
    assert mailbox.to("ada.lovelace@example.com")
    r = await signup(client, "ADA.LOVELACE@example.com")
    assert r.status_code == 200, r.text
    assert r.json()["signupStatus"] == 2
    assert await count_rows(app, User) == 1

    code = mailbox.last_code("ada.lovelace@example.com")
    r = await _verify(client, "ada.LOVELACE@EXAMPLE.com", code)
    assert r.status_code == 200, r.text
    r = await signup(client, "ada.lovelace@EXAMPLE.com")
    assert_error(r, 400, "ACCOUNT_EXISTS", signupStatus=1)
    assert (await login(client, "ADA.lovelace@example.com")).status_code == 200


_GOOD = {"email": "ada@example.com", "password": PASSWORD, "name": "Ada"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": None}, "email"),
        ({"password": None}, "password"),
        ({"name": None}, "name"),
        ({"email": ""}, "email"),
        ({"password": ""}, "password"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"email": 42}, "email"),
        ({"password": 12345678}, "password"),
        ({"name": ["Ada"]}, "name"),
        ({"company_name": 7}, "company_name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "ada@"}, "email"),
        ({"email": "ada@localhost"}, "email"),
        ({"email": "a" * 250 + "@example.com"}, "email"),
        ({"password": "short7!"}, "password"),
        ({"password": "x" * 129}, "password"),
        ({"name": "n" * 101}, "name"),
        ({"company_name": "c" * 201}, "company_name"),
    ],
)
async def test_signup_rejects_bad_fields_with_400_and_creates_nothing(
    client, mailbox, app, change, field
):
    payload: dict[str, Any] = {**_GOOD}
    for key, value in change.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    r = await client.post("/auth/signup", json=payload)
    assert_validation_error(r, field)
    assert await count_rows(app, User) == 0
    assert mailbox.messages == []


async def test_signup_lists_every_missing_field(client, app):
    body = assert_validation_error(
        await client.post("/auth/signup", json={}), "email", "password", "name"
    )
    assert {"field": "email", "message": "is required"} in body["errors"]


async def test_signup_password_of_exactly_8_characters_is_enough(client, mailbox):
    r = await signup(client, "ada@example.com", password="12345678")
    assert r.status_code == 200, r.text


async def test_signup_with_a_body_that_is_not_json(client, mailbox, app):
    r = await client.post(
        "/auth/signup",
        content=b'{"email": "ada@example.com", "password": ',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400, "INVALID_JSON")
    assert await count_rows(app, User) == 0


async def test_signup_ignores_fields_it_does_not_name(client, mailbox, app):
    r = await client.post(
        "/auth/signup", json={**_GOOD, "verified": True, "id": str(uuid.uuid4()), "api_key": "x"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["user"]["verified"] is False
    assert (await get_user(app, "ada@example.com")).verified is False


@pytest.fixture
def dead_smtp(settings_overrides: dict[str, Any]) -> None:
    settings_overrides["smtp_port"] = free_port()  # nothing listens there


async def test_signup_when_the_code_email_cannot_be_sent_creates_nothing(dead_smtp, client, app):
    r = await signup(client, "ada@example.com")
    assert_error(r, 502, "EMAIL_NOT_SENT", signupStatus=6)
    assert await count_rows(app, User) == 0


# --- verify-email ------------------------------------------------------------------------------


async def test_verify_email_verifies_and_returns_a_token_pair(client, mailbox, app):
    email, code = await unverified_account(client, mailbox)
    r = await _verify(client, email, code)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "message",
        "status",
        "userData",
        "verificationStatus",
        "token",
        "refreshToken",
        "expirationTime",
    }
    assert body["message"] == "email verification successful."
    assert body["status"] == "success"
    assert body["verificationStatus"] == 2
    assert set(body["userData"]) == USER_KEYS
    assert body["userData"]["verified"] is True
    assert body["userData"]["email"] == email
    expires = parse_iso_ms(body["expirationTime"])
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=2))) < timedelta(minutes=1)

    assert await is_authenticated(client, {"Authorization": f"Bearer {body['token']}"})
    row = await get_user(app, email)
    assert row.verified is True
    assert row.verification_code_hash is None
    assert row.verification_code_expires_at is None
    refresh = await refresh_rows(app, str(row.id))
    assert [t.token_hash for t in refresh] == [sha256_hex(body["refreshToken"])]
    r = await client.post("/auth/refresh-token", json={"refreshToken": body["refreshToken"]})
    assert r.status_code == 200, r.text


async def test_verify_email_with_a_wrong_code_counts_the_try(client, mailbox, app):
    email, code = await unverified_account(client, mailbox)
    r = await _verify(client, email, _other_code(code))
    body = assert_error(r, 400, "INVALID_CODE", verificationStatus=1)
    assert "4 tries left" in body["message"]
    row = await get_user(app, email)
    assert row.verification_failed_attempts == 1
    assert row.verified is False
    assert await count_rows(app, RefreshToken) == 0
    # A try that was wrong does not burn the right code.
    assert (await _verify(client, email, code)).status_code == 200


async def test_five_wrong_codes_invalidate_the_code(client, mailbox, app):
    email, code = await unverified_account(client, mailbox)
    for attempt in range(1, 6):
        body = assert_error(
            await _verify(client, email, _other_code(code)),
            400,
            "INVALID_CODE",
            verificationStatus=1,
        )
        assert (await get_user(app, email)).verification_failed_attempts == attempt
    assert "request a new code" in body["message"]
    row = await get_user(app, email)
    assert row.verification_code_hash is None

    # Even the right code is refused now, and the message says what to do.
    body = assert_error(
        await _verify(client, email, code), 400, "CODE_EXPIRED", verificationStatus=1
    )
    assert "request a new one" in body["message"]
    assert (await get_user(app, email)).verified is False

    r = await client.post("/auth/resend-code", json={"email": email})
    assert r.status_code == 200, r.text
    assert (await get_user(app, email)).verification_failed_attempts == 0
    assert (await _verify(client, email, mailbox.last_code(email))).status_code == 200


async def test_verify_email_with_an_expired_code(client, mailbox, app):
    email, code = await unverified_account(client, mailbox)
    await db_update(app, User, User.email == email, verification_code_expires_at=past(1))
    body = assert_error(
        await _verify(client, email, code), 400, "CODE_EXPIRED", verificationStatus=1
    )
    assert "request a new one" in body["message"]
    row = await get_user(app, email)
    assert row.verified is False
    assert row.verification_failed_attempts == 0


async def test_verify_email_for_an_unknown_email(client, mailbox, app):
    r = await _verify(client, "nobody@example.com", "123456")
    assert_error(r, 404, "ACCOUNT_NOT_FOUND", verificationStatus=5)
    assert await fetch_user(app, "nobody@example.com") is None


async def test_verify_email_when_already_verified(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    r = await _verify(client, acct.email, "123456")
    assert_error(r, 400, "ALREADY_VERIFIED", verificationStatus=4)
    assert len(await refresh_rows(app, acct.user_id)) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "ada@example.com"}, "code"),
        ({"code": "123456"}, "email"),
        ({"email": "ada@example.com", "code": "12345"}, "code"),
        ({"email": "ada@example.com", "code": "1234567"}, "code"),
        ({"email": "ada@example.com", "code": "12a456"}, "code"),
        ({"email": "ada@example.com", "code": 123456}, "code"),
        ({"email": "not-an-email", "code": "123456"}, "email"),
    ],
)
async def test_verify_email_rejects_bad_fields(client, mailbox, app, payload, field):
    email, _ = await unverified_account(client, mailbox, "ada@example.com")
    assert_validation_error(await client.post("/auth/verify-email", json=payload), field)
    # A malformed request is not a wrong try.
    assert (await get_user(app, email)).verification_failed_attempts == 0


# --- resend-code -------------------------------------------------------------------------------


async def test_resend_code_sends_a_new_code_and_voids_the_old(client, mailbox, app):
    email, old_code = await unverified_account(client, mailbox)
    await _verify(client, email, _other_code(old_code))  # one wrong try on the old code
    before = await get_user(app, email)
    r = await client.post("/auth/resend-code", json={"email": email.upper()})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "message": "successfully sent verification code to mail",
        "status": "success",
    }
    assert len(mailbox.to(email)) == 2
    new_code = mailbox.last_code(email)
    after = await get_user(app, email)
    assert after.verification_code_hash == app.state.ctx.signer.code_hash(email, new_code)
    assert after.verification_code_hash != before.verification_code_hash
    assert after.verification_failed_attempts == 0
    if new_code != old_code:
        assert_error(
            await _verify(client, email, old_code), 400, "INVALID_CODE", verificationStatus=1
        )
    assert (await _verify(client, email, new_code)).status_code == 200


async def test_resend_code_for_an_unknown_email(client, mailbox, app):
    r = await client.post("/auth/resend-code", json={"email": "nobody@example.com"})
    assert_error(r, 404, "ACCOUNT_NOT_FOUND")
    assert mailbox.messages == []


async def test_resend_code_when_already_verified(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    mailbox.clear()
    r = await client.post("/auth/resend-code", json={"email": acct.email})
    assert_error(r, 400, "ALREADY_VERIFIED")
    assert mailbox.messages == []
    assert (await get_user(app, acct.email)).verification_code_hash is None


@pytest.mark.parametrize("payload", [{}, {"email": ""}, {"email": "nope"}, {"email": ["a@b.co"]}])
async def test_resend_code_rejects_bad_email(client, mailbox, payload):
    assert_validation_error(await client.post("/auth/resend-code", json=payload), "email")


async def test_resend_code_when_the_email_cannot_be_sent_keeps_the_old_code(
    client, mailbox, app, settings
):
    email, code = await unverified_account(client, mailbox, new_email())
    before = await get_user(app, email)
    # From now on the mail goes to a port where nothing listens.
    app.state.ctx.mailer = SmtpMailer(settings.model_copy(update={"smtp_port": free_port()}))
    r = await client.post("/auth/resend-code", json={"email": email})
    assert_error(r, 502, "EMAIL_NOT_SENT")
    after = await get_user(app, email)
    assert after.verification_code_hash == before.verification_code_hash
    assert (await _verify(client, email, code)).status_code == 200


async def test_concurrent_wrong_codes_cannot_exceed_the_five_tries(client, mailbox, app):
    """Guesses sent all at once are each counted, before they are checked."""
    email, code = await unverified_account(client, mailbox)
    wrong = [f"{(int(code) + i) % 10**6:06d}" for i in range(1, 13)]
    results = await asyncio.gather(*(_verify(client, email, guess) for guess in wrong))
    assert all(r.status_code == 400 for r in results), [r.text for r in results]
    checked = [r for r in results if r.json()["code"] == "INVALID_CODE"]
    assert len(checked) == 5, [r.json() for r in results]
    for r in results:
        if r.json()["code"] != "INVALID_CODE":
            assert_error(r, 400, "CODE_EXPIRED", verificationStatus=1)
    row = await get_user(app, email)
    assert row.verification_failed_attempts == 5
    assert row.verification_code_hash is None
    assert_error(await _verify(client, email, code), 400, "CODE_EXPIRED", verificationStatus=1)


async def test_concurrent_signups_with_one_email_make_one_account(client, mailbox, app):
    results = await asyncio.gather(*(signup(client, "ada@example.com") for _ in range(3)))
    statuses = [r.status_code for r in results]
    assert 500 not in statuses and 502 not in statuses, [r.text for r in results]
    created = [r for r in results if r.status_code == 200 and r.json()["signupStatus"] == 3]
    assert len(created) == 1, [r.text for r in results]
    assert await count_rows(app, User) == 1
