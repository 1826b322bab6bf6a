"""Who is calling: Bearer access tokens, API keys, and /user/generate-apikey (docs/api/index.md)."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import delete

from app.models import User
from app.security import JWT_AUDIENCE, JWT_ISSUER, JWT_LEEWAY, TokenSigner, sha256_hex
from tests.conftest import TEST_SECRET
from tests.factories import (
    Account,
    api_key_for,
    assert_error,
    db_update,
    get_user,
    is_authenticated,
    unverified_account,
    verified_account,
)

PROTECTED = "/user/get-active-project"


def _claims(user_id: str, **changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user_id,
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "ver": 0,
        "iat": now,
        "exp": now + timedelta(hours=2),
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
    }
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def _jwt(user_id: str, *, key: str = TEST_SECRET, alg: str = "HS256", **changes: Any) -> str:
    return jwt.encode(_claims(user_id, **changes), key, algorithm=alg)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    r = await client.get(PROTECTED, headers=headers)
    return r.status_code


# --- no or unusable credentials ----------------------------------------------------------------


async def test_no_credential_is_401(client):
    r = await client.get(PROTECTED)
    body = assert_error(r, 401, "UNAUTHORIZED")
    assert "Bearer" in body["message"] and "x-api-key" in body["message"]


@pytest.mark.parametrize(
    "authorization",
    ["Basic x", "Basic YWRhOnBhc3N3b3Jk", "Bearer", "Bearer ", "Token abc", "garbage", ""],
)
async def test_a_malformed_authorization_header_is_401(client, mailbox, authorization):
    await verified_account(client, mailbox)
    r = await client.get(PROTECTED, headers={"Authorization": authorization})
    assert r.status_code == 401, r.text
    assert r.json()["code"] in ("UNAUTHORIZED", "INVALID_TOKEN")


@pytest.mark.parametrize("authorization", ["Basic x", "Bearer", "Token abc", ""])
async def test_a_malformed_authorization_header_next_to_a_good_api_key_is_401(
    client, mailbox, authorization
):
    """A credential presented must be valid, even when a good one comes with it."""
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    assert await _status(client, {"x-api-key": key}) == 404
    r = await client.get(PROTECTED, headers={"x-api-key": key, "Authorization": authorization})
    assert_error(r, 401, "INVALID_TOKEN")


async def test_an_empty_api_key_next_to_a_good_bearer_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    r = await client.get(PROTECTED, headers={**acct.bearer, "x-api-key": ""})
    assert_error(r, 401, "INVALID_API_KEY")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 2000])
async def test_a_garbage_bearer_token_is_401(client, mailbox, token):
    r = await client.get(PROTECTED, headers=_bearer(token))
    assert_error(r, 401, "INVALID_TOKEN")


# --- crafted JWTs ------------------------------------------------------------------------------


async def test_a_crafted_token_with_the_server_key_is_accepted(client, mailbox):
    """The control for the tests below: the claims they vary are the ones the server checks."""
    acct = await verified_account(client, mailbox)
    assert await _status(client, _bearer(_jwt(acct.user_id))) == 404


async def test_a_tampered_token_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    other = await verified_account(client, mailbox)
    header, _, signature = acct.token.split(".")
    forged = jwt.decode(acct.token, options={"verify_signature": False})
    forged["sub"] = other.user_id
    tampered = f"{header}.{_b64(forged)}.{signature}"
    assert_error(await client.get(PROTECTED, headers=_bearer(tampered)), 401, "INVALID_TOKEN")
    # Flipping the signature itself is no better.
    sig = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    sig[0] ^= 0xFF
    resigned = (
        f"{header}.{acct.token.split('.')[1]}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"
    )
    assert await _status(client, _bearer(resigned)) == 401


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"exp": datetime.now(UTC) - timedelta(minutes=1)}, id="expired"),
        pytest.param({"typ": "refresh"}, id="typ-refresh"),
        pytest.param({"typ": None}, id="no-typ"),
        pytest.param({"aud": "someone-else"}, id="audience"),
        pytest.param({"iss": "someone-else"}, id="issuer"),
        pytest.param({"aud": None}, id="no-audience"),
        pytest.param({"iss": None}, id="no-issuer"),
        pytest.param({"jti": None}, id="no-token-id"),
        pytest.param({"iat": None}, id="no-issued-at"),
        pytest.param({"ver": 1}, id="old-token-version"),
        pytest.param({"ver": None}, id="no-version"),
        pytest.param({"exp": None}, id="no-expiry"),
        pytest.param({"sub": "not-a-uuid"}, id="bad-subject"),
        pytest.param({"sub": str(uuid.uuid4())}, id="unknown-user"),
    ],
)
async def test_a_token_with_a_bad_claim_is_401(client, mailbox, changes):
    acct = await verified_account(client, mailbox)
    token = _jwt(acct.user_id, **changes)
    assert_error(await client.get(PROTECTED, headers=_bearer(token)), 401, "INVALID_TOKEN")


async def test_an_alg_none_token_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    claims = _claims(acct.user_id)
    claims = {k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in claims.items()}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert_error(await client.get(PROTECTED, headers=_bearer(unsigned)), 401, "INVALID_TOKEN")


async def test_a_token_signed_with_another_key_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    token = _jwt(acct.user_id, key="another-secret-key-" + "y" * 32)
    assert_error(await client.get(PROTECTED, headers=_bearer(token)), 401, "INVALID_TOKEN")


# PyJWT warns that the test key is short for HS512 when it signs; the server never signs one.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_a_token_with_another_algorithm_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    token = _jwt(acct.user_id, alg="HS512")
    assert_error(await client.get(PROTECTED, headers=_bearer(token)), 401, "INVALID_TOKEN")


async def test_a_token_for_an_unverified_user_is_401(client, mailbox, app):
    email, _ = await unverified_account(client, mailbox)
    user = await get_user(app, email)
    token = _jwt(str(user.id))
    assert_error(await client.get(PROTECTED, headers=_bearer(token)), 401, "INVALID_TOKEN")


async def test_a_refresh_token_is_not_a_bearer_token(client, mailbox):
    acct = await verified_account(client, mailbox)
    r = await client.get(PROTECTED, headers=_bearer(acct.refresh_token))
    assert_error(r, 401, "INVALID_TOKEN")


# --- API keys, and both credentials at once ----------------------------------------------------


async def test_an_api_key_authenticates(client, mailbox):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    assert await _status(client, {"x-api-key": key}) == 404


@pytest.mark.parametrize("name", ["X-API-KEY", "X-Api-Key", "x-api-key"])
async def test_header_names_are_case_insensitive(client, mailbox, name):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    assert await _status(client, {name: key}) == 404
    assert await _status(client, {"AUTHORIZATION": f"bearer {acct.token}"}) == 404


@pytest.mark.parametrize("key", ["garbage", "0" * 64, "A" * 64])
async def test_a_wrong_api_key_is_401(client, mailbox, key):
    acct = await verified_account(client, mailbox)
    await api_key_for(client, acct)
    assert_error(await client.get(PROTECTED, headers={"x-api-key": key}), 401, "INVALID_API_KEY")


async def test_a_good_api_key_with_a_bad_bearer_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    r = await client.get(PROTECTED, headers={"x-api-key": key, **_bearer("garbage")})
    assert_error(r, 401, "INVALID_TOKEN")
    expired = _jwt(acct.user_id, exp=datetime.now(UTC) - timedelta(minutes=1))
    assert await _status(client, {"x-api-key": key, **_bearer(expired)}) == 401


async def test_a_good_bearer_with_a_bad_api_key_is_401(client, mailbox):
    acct = await verified_account(client, mailbox)
    await api_key_for(client, acct)
    r = await client.get(PROTECTED, headers={**acct.bearer, "x-api-key": "0" * 64})
    assert_error(r, 401, "INVALID_API_KEY")


async def test_a_bearer_and_an_api_key_of_two_users_are_401(client, mailbox):
    ada = await verified_account(client, mailbox)
    bob = await verified_account(client, mailbox)
    bob_key = await api_key_for(client, bob)
    assert await _status(client, {**ada.bearer, "x-api-key": bob_key}) == 401


async def test_a_bearer_and_an_api_key_of_the_same_user_pass(client, mailbox):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    assert await _status(client, {**acct.bearer, "x-api-key": key}) == 404


# --- generate-apikey ---------------------------------------------------------------------------


async def test_generate_apikey_returns_a_key_stored_only_as_a_hash(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    r = await client.get("/user/generate-apikey", headers=acct.bearer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"message", "status", "apiKey"}
    assert body["message"] == "API key successfully generated and updated."
    assert body["status"] == "success"
    key = body["apiKey"]
    assert re.fullmatch(r"[0-9a-f]{64}", key), key

    user = await get_user(app, acct.email)
    assert user.api_key_hash == sha256_hex(key)
    assert user.api_key_created_at is not None
    async with app.state.ctx.sessionmaker() as session:
        row = await session.get(User, user.id)
        assert row is not None
        values = [str(getattr(row, c.key)) for c in User.__table__.columns]
    assert not any(key in v for v in values)


async def test_a_new_api_key_replaces_the_old_at_once(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    old = await api_key_for(client, acct)
    new = await api_key_for(client, acct)
    assert old != new
    assert_error(await client.get(PROTECTED, headers={"x-api-key": old}), 401, "INVALID_API_KEY")
    assert await _status(client, {"x-api-key": new}) == 404
    assert (await get_user(app, acct.email)).api_key_hash == sha256_hex(new)


async def test_generate_apikey_refuses_an_api_key(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    r = await client.get("/user/generate-apikey", headers={"x-api-key": key})
    assert_error(r, 401, "UNAUTHORIZED")
    # The key was not rotated by the refused call.
    assert (await get_user(app, acct.email)).api_key_hash == sha256_hex(key)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"Authorization": "Basic x"}, id="basic"),
        pytest.param(_bearer("garbage"), id="garbage-bearer"),
    ],
)
async def test_generate_apikey_refuses_bad_bearers(client, mailbox, app, headers):
    acct = await verified_account(client, mailbox)
    r = await client.get("/user/generate-apikey", headers=headers)
    assert r.status_code == 401, r.text
    assert (await get_user(app, acct.email)).api_key_hash is None


async def test_generate_apikey_with_a_bearer_and_a_wrong_api_key_is_401(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    r = await client.get("/user/generate-apikey", headers={**acct.bearer, "x-api-key": "0" * 64})
    assert r.status_code == 401, r.text
    assert (await get_user(app, acct.email)).api_key_hash == sha256_hex(key)


async def test_generate_apikey_refuses_a_refresh_token(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    r = await client.get("/user/generate-apikey", headers=_bearer(acct.refresh_token))
    assert_error(r, 401, "INVALID_TOKEN")


async def test_an_api_key_of_a_user_whose_token_version_moved_still_works(client, mailbox, app):
    """API keys are not sessions: a password change ends sessions, not the key."""
    acct: Account = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    await db_update(app, User, User.id == uuid.UUID(acct.user_id), token_version=5)
    assert not await is_authenticated(client, acct.bearer)
    assert await is_authenticated(client, {"x-api-key": key})


# --- checked against the database on every request ---------------------------------------------


async def test_a_key_replaced_behind_the_apis_back_stops_at_once(client, mailbox, app):
    """As another process regenerating the key would: nothing in this one remembers the old."""
    acct = await verified_account(client, mailbox)
    old = await api_key_for(client, acct)
    assert await _status(client, {"x-api-key": old}) == 404
    new = "ab" * 32
    await db_update(app, User, User.id == uuid.UUID(acct.user_id), api_key_hash=sha256_hex(new))
    assert_error(await client.get(PROTECTED, headers={"x-api-key": old}), 401, "INVALID_API_KEY")
    assert await _status(client, {"x-api-key": new}) == 404


async def test_a_token_already_used_stops_when_its_version_moves(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    assert await _status(client, acct.bearer) == 404
    assert await _status(client, acct.bearer) == 404
    await db_update(app, User, User.id == uuid.UUID(acct.user_id), token_version=1)
    assert_error(await client.get(PROTECTED, headers=acct.bearer), 401, "INVALID_TOKEN")


async def test_a_token_already_used_stops_when_its_user_is_unverified(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    key = await api_key_for(client, acct)
    assert await _status(client, acct.bearer) == 404
    await db_update(app, User, User.id == uuid.UUID(acct.user_id), verified=False)
    assert_error(await client.get(PROTECTED, headers=acct.bearer), 401, "INVALID_TOKEN")
    # An API key is refused only when it is not the user's current one, as before.
    assert await _status(client, {"x-api-key": key}) == 404


async def test_a_token_of_a_deleted_user_is_401(client, mailbox, app):
    acct = await verified_account(client, mailbox)
    assert await _status(client, acct.bearer) == 404
    async with app.state.ctx.sessionmaker() as session:
        await session.execute(delete(User).where(User.id == uuid.UUID(acct.user_id)))
        await session.commit()
    assert_error(await client.get(PROTECTED, headers=acct.bearer), 401, "INVALID_TOKEN")


# --- TokenSigner: each token is verified once -----------------------------------------------------


def _signer() -> TokenSigner:
    return TokenSigner(TEST_SECRET, algorithm="HS256", ttl_seconds=7200)


def test_a_remembered_token_still_expires(monkeypatch):
    signer = _signer()
    user_id = uuid.uuid4()
    token, expires = signer.issue_access(user_id, 3)
    assert signer.decode_access(token) == signer.decode_access(token)
    assert signer.decode_access(token).user_id == user_id
    later = expires.timestamp() + JWT_LEEWAY + 1
    monkeypatch.setattr("app.security.time.time", lambda: later)
    with pytest.raises(jwt.ExpiredSignatureError):
        signer.decode_access(token)
    assert token not in signer._verified  # and forgotten


def test_a_token_is_remembered_by_its_exact_text():
    signer = _signer()
    token, _ = signer.issue_access(uuid.uuid4(), 0)
    signer.decode_access(token)
    head, payload, signature = token.split(".")
    forged = _b64({**json.loads(base64.urlsafe_b64decode(payload + "==")), "ver": 9})
    for other in (f"{head}.{forged}.{signature}", token + "x", token[:-1]):
        with pytest.raises(jwt.InvalidTokenError):
            signer.decode_access(other)
    with pytest.raises(jwt.InvalidTokenError):  # another key
        TokenSigner("another-" + TEST_SECRET, algorithm="HS256", ttl_seconds=60).decode_access(
            token
        )


def test_only_so_many_tokens_are_remembered(monkeypatch):
    monkeypatch.setattr("app.security.VERIFIED_TOKENS_KEPT", 3)
    signer = _signer()
    tokens = [signer.issue_access(uuid.uuid4(), 0)[0] for _ in range(5)]
    for token in tokens:
        signer.decode_access(token)
    assert list(signer._verified) == tokens[2:]
    # A forgotten token is verified again, not refused.
    assert signer.decode_access(tokens[0]).token_version == 0
