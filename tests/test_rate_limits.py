"""Abuse limits on the public auth endpoints: 429 with Retry-After, per address and per email."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import coredis
import httpx
import pytest

from app.config import Settings
from app.errors import TooManyRequests
from app.main import create_app
from app.models import User
from app.ratelimit import AuthRateLimiter
from tests.conftest import IN_CI
from tests.factories import PASSWORD, count_rows, login, unverified_account, verified_account

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def per_email(settings_overrides: dict[str, Any]) -> None:
    settings_overrides.update(
        rate_limit_enabled=True, rate_limit_per_email="3/minute", rate_limit_per_ip="100/minute"
    )


@pytest.fixture
def per_ip(settings_overrides: dict[str, Any]) -> None:
    settings_overrides.update(
        rate_limit_enabled=True, rate_limit_per_email="100/minute", rate_limit_per_ip="3/minute"
    )


async def _client_from(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def assert_rate_limited(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body == {"message": body["message"], "status": "error", "code": "RATE_LIMITED"}
    assert body["message"]
    retry = r.headers["retry-after"]
    assert retry.isdigit(), retry
    assert 1 <= int(retry) <= 60
    return int(retry)


async def test_the_fourth_login_for_one_email_is_429(per_email, client, mailbox, app):
    acct = await verified_account(client, mailbox)
    for _ in range(3):
        assert (await login(client, acct.email, "wrong password")).status_code == 401
    r = await login(client, acct.email)  # even the right password waits now
    retry = assert_rate_limited(r)
    assert str(retry) in r.json()["message"]
    # Other emails from the same address are not held back, whatever the case of the email.
    assert (await login(client, "someone@example.com", PASSWORD)).status_code == 401
    assert_rate_limited(await login(client, acct.email.upper(), PASSWORD))


async def test_the_per_email_limit_holds_across_addresses(per_email, client, mailbox, app):
    acct = await verified_account(client, mailbox)
    for _ in range(3):
        assert (await login(client, acct.email, "wrong password")).status_code == 401
    async with await _client_from(app, "198.51.100.9") as elsewhere:
        assert_rate_limited(await login(elsewhere, acct.email))


async def test_the_per_address_limit(per_ip, client, app):
    for i in range(3):
        assert (await login(client, f"u{i}@example.com", PASSWORD)).status_code == 401
    assert_rate_limited(await login(client, "u9@example.com", PASSWORD))
    async with await _client_from(app, "198.51.100.9") as elsewhere:
        assert (await login(elsewhere, "u9@example.com", PASSWORD)).status_code == 401


async def test_each_flow_has_its_own_budget(per_ip, client, mailbox, app):
    for i in range(3):
        assert (await login(client, f"u{i}@example.com", PASSWORD)).status_code == 401
    assert_rate_limited(await login(client, "u3@example.com", PASSWORD))
    r = await client.post("/auth/forgot-password", json={"email": "u3@example.com"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/auth/signup", {"email": "{email}", "password": PASSWORD, "name": "Ada"}),
        ("/auth/verify-email", {"email": "{email}", "code": "000000"}),
        ("/auth/resend-code", {"email": "{email}"}),
        ("/auth/forgot-password", {"email": "{email}"}),
        ("/auth/reset-password", {"token": "{email}", "newPassword": PASSWORD}),
    ],
)
async def test_every_public_account_flow_is_limited(per_ip, client, mailbox, app, path, payload):
    for i in range(4):
        body = {k: v.format(email=f"u{i}@example.com") for k, v in payload.items()}
        r = await client.post(path, json=body)
        if i < 3:
            assert r.status_code != 429, r.text
        else:
            assert_rate_limited(r)


async def test_a_limited_signup_creates_nothing_and_sends_nothing(per_email, client, mailbox, app):
    email, _ = await unverified_account(client, mailbox, "ada@example.com")
    for _ in range(2):
        r = await client.post(
            "/auth/signup", json={"email": email, "password": PASSWORD, "name": "Ada"}
        )
        assert r.status_code == 200, r.text
    mailbox.clear()
    r = await client.post("/auth/signup", json={"email": email, "password": PASSWORD, "name": "A"})
    assert_rate_limited(r)
    assert mailbox.messages == []
    assert await count_rows(app, User) == 1


async def test_limits_are_off_when_disabled(client, mailbox, app):
    """The test settings turn limits off; the default is on."""
    assert Settings.model_fields["rate_limit_enabled"].default is True
    for _ in range(15):
        assert (await login(client, "ada@example.com", PASSWORD)).status_code == 401


# --- Redis -------------------------------------------------------------------------------------


def _redis_reachable() -> bool:
    url = httpx.URL(REDIS_URL)
    try:
        with socket.create_connection((url.host, url.port or 6379), timeout=1):
            return True
    except OSError:
        return False


async def _flush_redis() -> None:
    client: Any = coredis.Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    finally:
        client.connection_pool.disconnect()


@pytest.fixture
async def redis_limits(settings_overrides: dict[str, Any]) -> AsyncIterator[None]:
    if not _redis_reachable():
        if IN_CI:
            pytest.fail(f"Redis is required under CI=true but not reachable at {REDIS_URL}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    settings_overrides.update(
        rate_limit_enabled=True,
        rate_limit_per_email="3/minute",
        rate_limit_per_ip="100/minute",
        redis_url=REDIS_URL,
    )
    await _flush_redis()
    try:
        yield
    finally:
        await _flush_redis()


async def test_limits_on_redis_are_shared_between_processes(redis_limits, client, settings):
    for _ in range(3):
        assert (await login(client, "ada@example.com", PASSWORD)).status_code == 401
    assert_rate_limited(await login(client, "ada@example.com", PASSWORD))

    # A second server process (its own limiter, the same Redis) sees the spent budget.
    other = AuthRateLimiter(settings)
    with pytest.raises(TooManyRequests) as exc:
        await other.check("login", client="198.51.100.9", email="ADA@example.com")
    assert exc.value.headers is not None and exc.value.headers["Retry-After"].isdigit()
    await other.check("login", client="198.51.100.9", email="bob@example.com")
    await other.aclose()


async def _connections_to_test_db() -> int:
    """Open Redis connections on the test database, other than the one asking."""
    client: Any = coredis.Redis.from_url(REDIS_URL)
    try:
        me = await client.client_id()
        clients = await client.client_list()
        return sum(1 for c in clients if int(c["db"]) == 15 and int(c["id"]) != me)
    finally:
        client.connection_pool.disconnect()


async def test_shutdown_closes_the_redis_connections(redis_limits, settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            assert (await login(c, "ada@example.com", PASSWORD)).status_code == 401
        assert await _connections_to_test_db() >= 1
    for _ in range(50):  # the server notices a closed socket a moment later
        if await _connections_to_test_db() == 0:
            break
        await asyncio.sleep(0.02)
    assert await _connections_to_test_db() == 0
