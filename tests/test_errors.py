"""Every error answers the body of docs/api/errors.md: unknown paths, methods, bad JSON, crashes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.deps import SessionDep
from app.models import User
from tests.factories import PASSWORD, assert_error, assert_validation_error, count_rows


@pytest.fixture
async def crashing_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sees the 500 the server sends, where the default one re-raises the error."""

    async def boom() -> None:
        raise RuntimeError("db password is hunter2")

    async def boom_after_write(session: SessionDep) -> None:
        session.add(User(email="ghost@example.com", name="Ghost", password_hash="x"))
        await session.flush()
        raise RuntimeError("crash after a write")

    app.add_api_route("/test-boom", boom, methods=["GET"])
    app.add_api_route("/test-boom-after-write", boom_after_write, methods=["POST"])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def test_an_unknown_path_is_404(client):
    r = await client.get("/no/such/path")
    assert r.json() == {"message": "Not found.", "status": "error", "code": "NOT_FOUND"}
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    r = await client.post("/auth/no-such-endpoint", json={})
    assert_error(r, 404, "NOT_FOUND")


async def test_a_wrong_method_is_405(client):
    r = await client.get("/auth/login")
    assert r.status_code == 405
    assert r.json() == {
        "message": "Method not allowed.",
        "status": "error",
        "code": "METHOD_NOT_ALLOWED",
    }
    assert "POST" in r.headers["allow"]
    assert_error(await client.delete("/user/generate-apikey"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    "content",
    [b'{"email": "ada@example.com", "password": ', b"{'email': 'x'}", b"not json", b"{,}"],
)
async def test_malformed_json_is_400_invalid_json(client, app, content):
    r = await client.post(
        "/auth/login", content=content, headers={"Content-Type": "application/json"}
    )
    assert r.json() == {
        "message": "The request body is not valid JSON.",
        "status": "error",
        "code": "INVALID_JSON",
    }
    assert r.status_code == 400


async def test_a_body_that_is_not_utf8_is_a_400_error_body(client):
    # FastAPI reports undecodable bytes apart from bad JSON; either way it is our error body.
    r = await client.post(
        "/auth/login",
        content=b'{"email": "\xff\xfe"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "error"
    assert body["code"] in ("INVALID_JSON", "BAD_REQUEST")
    assert body["message"]


async def test_validation_errors_list_each_field(client):
    r = await client.post("/auth/signup", json={"email": "nope", "password": "short"})
    body = assert_validation_error(r, "email", "password", "name")
    assert {"field": "name", "message": "is required"} in body["errors"]
    assert body["message"].startswith("Invalid request: ")
    for field in ("email", "password", "name"):
        assert field in body["message"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"json": ["ada@example.com", PASSWORD]}, "body"),
        ({"json": "ada@example.com"}, "body"),
        ({"json": None}, "body"),
        ({"content": b""}, "body"),
    ],
)
async def test_a_body_that_is_not_an_object_is_400(client, kwargs, field):
    r = await client.post("/auth/login", headers={"Content-Type": "application/json"}, **kwargs)
    assert_validation_error(r, field)


async def test_an_unhandled_error_is_a_generic_500(crashing_client, caplog):
    r = await crashing_client.get("/test-boom")
    assert r.status_code == 500
    assert r.json() == {
        "message": "Internal server error.",
        "status": "error",
        "code": "INTERNAL_ERROR",
    }
    assert "hunter2" not in r.text
    assert "Traceback" not in r.text
    assert "RuntimeError" not in r.text
    # The details go to the log, for the operator.
    assert any("hunter2" in (rec.exc_text or str(rec.exc_info)) for rec in caplog.records)


async def test_an_unhandled_error_rolls_back_what_the_request_wrote(crashing_client, app):
    r = await crashing_client.post("/test-boom-after-write")
    assert_error(r, 500, "INTERNAL_ERROR")
    assert await count_rows(app, User) == 0
    assert app.state.ctx.engine.pool.checkedout() == 0
