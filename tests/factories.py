"""Small async factories: what a test needs, made the way a user would make it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from app.models import Project
from tests.mailbox import Mailbox

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


async def make_project(app: Any, user_id: str, name: str = "Project", **fields: Any) -> str:
    """Projects get their own endpoints in the next issue; until then tests insert them."""
    async with app.state.ctx.sessionmaker() as session:
        project = Project(user_id=uuid.UUID(user_id), name=name, description="", **fields)
        session.add(project)
        await session.commit()
        return str(project.id)
