"""The flat route table (app/web/routing.py): every route still answers where it did, behind a
proxy's root path too, and a router included as protected needs a credential."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

from app.deps import current_user
from app.timefmt import iso_ms
from app.web.routing import Route, dependency_calls, include_flat
from tests.factories import api_key_for, make_project, verified_account
from tests.mailbox import Mailbox


async def test_served_under_a_root_path(app: Any, mailbox: Mailbox) -> None:
    # As behind a proxy that serves the API at /api (uvicorn --root-path /api): the path
    # Starlette sees carries the prefix.
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        # verified_account posts to /auth/*: under the root path, that is /api/auth/*.
        c.base_url = httpx.URL("http://testserver/api")
        account = await verified_account(c, mailbox)
        key = await api_key_for(c, account)
        project_id = await make_project(app, account.user_id, name="Behind a proxy")
        headers = {"x-api-key": key}

        assert (await c.get("/health")).json()["message"] == "ok"
        r = await c.get(f"/project/{project_id}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["name"] == "Behind a proxy"
        r = await c.post(
            "/user/set-active-project", json={"projectId": project_id}, headers=headers
        )
        assert r.status_code == 200, r.text
        r = await c.get("/user/get-active-project", headers=headers)
        assert r.status_code == 200 and r.json()["projectData"]["id"] == project_id
        # The docs page points at the document under the prefix.
        assert "/api/openapi.json" in (await c.get("/docs")).text


@pytest.mark.parametrize(
    "path",
    [
        "/xuser/get-active-project",  # ends like a route's path, is not it
        "/user/get-active-project/x",
        "/user/get-active-projec",
        "/USER/get-active-project",
    ],
)
async def test_only_a_routes_own_path_matches_it(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path, headers={"x-api-key": "whatever"})
    assert r.status_code == 404, r.text
    assert r.json()["status"] == "error"


async def test_a_known_path_with_another_method_is_405(client: httpx.AsyncClient) -> None:
    r = await client.delete("/user/get-active-project")
    assert r.status_code == 405
    assert "GET" in r.headers["allow"]


def test_every_api_route_is_flat_and_uses_the_fast_route(app: Any) -> None:
    api_routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert api_routes, "no routes"
    # One list: no included-router branches to walk on each request.
    assert all(type(r) is Route for r in api_routes if r.path.startswith(("/user", "/call")))
    paths = [r.path for r in api_routes]
    assert paths.index("/user/get-active-project") < paths.index("/auth/login")


def test_include_flat_protects_and_does_not_repeat_a_dependency() -> None:
    router = APIRouter(prefix="/things", tags=["things"])

    @router.get("/open")
    async def open_thing() -> dict[str, str]:
        """No credential asked for by the route itself."""
        return {}

    @router.get("/mine")
    async def my_thing(caller: Any = Depends(current_user)) -> dict[str, str]:
        """Asks for the caller itself."""
        return {}

    app = FastAPI()
    include_flat(app, router, dependencies=[Depends(current_user)])
    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    assert current_user in dependency_calls(routes["/things/open"].dependant)
    mine = routes["/things/mine"].dependant
    assert [d.call for d in mine.dependencies].count(current_user) == 1
    assert routes["/things/open"].tags == ["things"]


def test_iso_ms_prints_utc_milliseconds_with_z() -> None:
    assert iso_ms(datetime(2025, 3, 10, 5, 20, 39, 831999, tzinfo=UTC)) == (
        "2025-03-10T05:20:39.831Z"
    )
    assert iso_ms(datetime(2025, 3, 10, 5, 20, 39, tzinfo=UTC)) == "2025-03-10T05:20:39.000Z"
    plus_five = timezone(timedelta(hours=5))
    assert iso_ms(datetime(2025, 3, 10, 5, 20, 39, 1000, tzinfo=plus_five)) == (
        "2025-03-10T00:20:39.001Z"
    )
    assert iso_ms(None) is None
