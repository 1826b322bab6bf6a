"""Small async factories: what a test needs, made the way a user would make it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select, update

from app.models import Call, PasswordResetToken, Project, RefreshToken, User
from tests.mailbox import Mailbox
from tests.standins.twilio import TwilioStandin

PASSWORD = "correct horse battery"


@dataclass
class Account:
    email: str
    password: str
    user_id: str
    token: str
    refresh_token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(
    client: httpx.AsyncClient, email: str, *, password: str = PASSWORD, name: str = "Ada"
) -> httpx.Response:
    return await client.post(
        "/auth/signup", json={"email": email, "password": password, "name": name}
    )


async def verified_account(
    client: httpx.AsyncClient,
    mailbox: Mailbox,
    email: str | None = None,
    *,
    password: str = PASSWORD,
) -> Account:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    r = await signup(client, email, password=password)
    assert r.status_code == 200, r.text
    code = mailbox.last_code(email)
    r = await client.post("/auth/verify-email", json={"email": email, "code": code})
    assert r.status_code == 200, r.text
    body = r.json()
    return Account(email, password, body["userData"]["id"], body["token"], body["refreshToken"])


async def api_key_for(client: httpx.AsyncClient, account: Account) -> str:
    r = await client.get("/user/generate-apikey", headers=account.bearer)
    assert r.status_code == 200, r.text
    key: str = r.json()["apiKey"]
    return key


@dataclass
class CallingAgent:
    """What a test that places calls starts from."""

    key: dict[str, str]  # the x-api-key header of the account that owns it all
    project: str
    agent: str
    number_sid: str  # the agent's number at the Twilio stand-in
    webhook_secret: str | None = None  # the project's, when it was given a webhook URL


async def calling_agent(
    client: httpx.AsyncClient,
    mailbox: Mailbox,
    twilio: TwilioStandin,
    *,
    number: str,
    agent: Mapping[str, Any],
    project_name: str = "Clinic",
    webhook_url: str | None = None,
) -> CallingAgent:
    """A verified account with an API key, its project (with `webhook_url`, if given), and an
    agent on `number`, a number the account owns at the Twilio stand-in. `agent` is the rest of
    the create-agent body (systemInstruction, firstMessage...); the name is Jack unless given."""
    account = await verified_account(client, mailbox)
    key = {"x-api-key": await api_key_for(client, account)}
    r = await client.post("/project/create-project", json={"name": project_name}, headers=key)
    assert r.status_code == 200, r.text
    project: str = r.json()["data"]["id"]
    secret = None
    if webhook_url is not None:
        r = await client.post(
            "/project/call-status/add-webhookurl",
            json={"projectId": project, "webhookURL": webhook_url},
            headers=key,
        )
        assert r.status_code == 200, r.text
        secret = r.json()["webhookSecret"]
    number_sid = twilio.add_incoming_number(number)
    r = await client.post(
        "/agent/create-agent",
        json={"name": "Jack", **agent, "projectId": project, "phoneNumber": number},
        headers=key,
    )
    assert r.status_code == 200, r.text
    return CallingAgent(key, project, r.json()["data"]["id"], number_sid, secret)


# The number the tests' agents call (their own is the one given to `calling_agent`).
CALLEE = "+14155550123"


async def dial(
    client: httpx.AsyncClient, setup: CallingAgent, *, to: str = CALLEE, **variables: str
) -> str:
    """makeCall with the agent, as its owner; returns the Call SID."""
    r = await client.post(
        "/call/makeCall",
        json={
            "number": to,
            "projectId": setup.project,
            "agentId": setup.agent,
            "dynamicVariables": variables,
        },
        headers=setup.key,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["call"]["call_id"])


async def call_row(app: Any, sid: str) -> Call:
    """The call as stored, by its Call SID."""
    async with app.state.ctx.sessionmaker() as session:
        call: Call = (await session.execute(select(Call).where(Call.call_sid == sid))).scalar_one()
        return call


async def eventually(
    app: Any, sid: str, predicate: Callable[[Call], Any], within: float = 10.0
) -> Call:
    """The stored call once `predicate` holds for it (background work gets there)."""
    deadline = time.monotonic() + within
    while True:
        call = await call_row(app, sid)
        if predicate(call):
            return call
        if time.monotonic() > deadline:
            raise AssertionError(
                f"call never got there: {call.status} {call.ended_reason} {call.transcript}"
            )
        await asyncio.sleep(0.02)


async def make_project(app: Any, user_id: str, name: str = "Project", **fields: Any) -> str:
    """Projects get their own endpoints in the next issue; until then tests insert them."""
    async with app.state.ctx.sessionmaker() as session:
        project = Project(user_id=uuid.UUID(user_id), name=name, description="", **fields)
        session.add(project)
        await session.commit()
        return str(project.id)


# --- shared by the auth and user tests -------------------------------------------------------

USER_KEYS = {
    "id",
    "name",
    "email",
    "verified",
    "active_project",
    "company_name",
    "created_at",
    "updated_at",
}
PROJECT_KEYS = {
    "id",
    "name",
    "description",
    "user_id",
    "status",
    "is_deleted",
    "call_status_webhook",
    "active_agent",
    "created_at",
    "updated_at",
}
_ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def parse_iso_ms(value: str) -> datetime:
    """A timestamp as the API writes it (docs/api/index.md), as an aware datetime."""
    assert _ISO_MS.match(value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def assert_error(r: httpx.Response, status: int, code: str, **extra: Any) -> dict[str, Any]:
    """The whole error body (docs/api/errors.md): message, status, code and nothing unexpected."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert isinstance(body.get("message"), str) and body["message"], body
    assert body == {"message": body["message"], "status": "error", "code": code, **extra}
    return body


def assert_validation_error(r: httpx.Response, *fields: str) -> dict[str, Any]:
    """400 VALIDATION_ERROR whose errors[] name (at least) the given fields."""
    assert r.status_code == 400, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"message", "status", "code", "errors"}, body
    assert body["status"] == "error" and body["code"] == "VALIDATION_ERROR", body
    assert body["errors"], body
    for err in body["errors"]:
        assert set(err) == {"field", "message"} and err["message"], err
    named = {e["field"] for e in body["errors"]}
    for field in fields:
        assert field in named, (field, body)
    return body


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


async def unverified_account(
    client: httpx.AsyncClient, mailbox: Mailbox, email: str | None = None
) -> tuple[str, str]:
    """Sign up without verifying; returns (email, emailed code)."""
    email = email or new_email()
    r = await signup(client, email)
    assert r.status_code == 200, r.text
    return email, mailbox.last_code(email)


async def fetch_user(app: Any, email: str) -> User | None:
    async with app.state.ctx.sessionmaker() as session:
        user: User | None = (
            await session.execute(select(User).where(User.email == email))
        ).scalar_one_or_none()
        return user


async def get_user(app: Any, email: str) -> User:
    user = await fetch_user(app, email)
    assert user is not None, email
    return user


async def count_rows(app: Any, model: type[Any]) -> int:
    async with app.state.ctx.sessionmaker() as session:
        n: int = (await session.execute(select(func.count()).select_from(model))).scalar_one()
        return n


async def refresh_rows(app: Any, user_id: str) -> list[RefreshToken]:
    async with app.state.ctx.sessionmaker() as session:
        rows = await session.execute(
            select(RefreshToken)
            .where(RefreshToken.user_id == uuid.UUID(user_id))
            .order_by(RefreshToken.created_at)
        )
        return list(rows.scalars())


async def reset_rows(app: Any, user_id: str) -> list[PasswordResetToken]:
    async with app.state.ctx.sessionmaker() as session:
        rows = await session.execute(
            select(PasswordResetToken)
            .where(PasswordResetToken.user_id == uuid.UUID(user_id))
            .order_by(PasswordResetToken.created_at)
        )
        return list(rows.scalars())


async def db_update(app: Any, model: Any, where: Any, **values: Any) -> None:
    """Change rows behind the API's back (expire a code, delete a project...)."""
    async with app.state.ctx.sessionmaker() as session:
        await session.execute(update(model).where(where).values(**values))
        await session.commit()


def past(seconds: int = 60) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/auth/login", json={"email": email, "password": password})


async def is_authenticated(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    """Whether a protected endpoint lets these headers in (401 or not)."""
    r = await client.get("/user/get-active-project", headers=headers)
    assert r.status_code in (200, 401, 404), r.text
    return r.status_code != 401


def relay_settings(twilio_standin: TwilioStandin, llm: Any, **more: Any) -> dict[str, Any]:
    """Settings for a test that holds a live conversation: the Twilio and LLM stand-ins, the
    receivers on 127.0.0.1 allowed, a quick job poll, an agent that speaks instantly (Twilio
    does not say when it finished speaking) and a patient callee."""
    return {
        **twilio_standin.settings_overrides(),
        **llm.settings_overrides(),
        "webhook_allow_private_hosts": True,
        "job_poll_interval_seconds": 0.05,
        "conversation_speech_chars_per_second": 1e6,
        "conversation_silence_seconds": 30.0,
        **more,
    }
