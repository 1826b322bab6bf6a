"""The interactive docs work offline, and the OpenAPI document is complete enough to use."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from app.config import Settings
from app.tasks import job_handlers

# Operations anyone may call. Every other one needs a credential and must say which.
PUBLIC = {
    ("get", "/health"),
    ("get", "/ready"),
    ("post", "/auth/signup"),
    ("post", "/auth/verify-email"),
    ("post", "/auth/resend-code"),
    ("post", "/auth/login"),
    ("post", "/auth/refresh-token"),
    ("post", "/auth/forgot-password"),
    ("post", "/auth/reset-password"),
}
# Twilio's callbacks are authenticated by X-Twilio-Signature, not by a user's credential.
SIGNED_BY_TWILIO_TAG = "twilio"
BEARER_ONLY = {("get", "/user/generate-apikey")}
METHODS = {"get", "put", "post", "delete", "patch"}
_ATTR_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


@pytest.fixture
def database_url(sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite only (overrides the conftest fixture): nothing here depends on the backend."""
    path = tmp_path / "docs.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def is_signed_by_twilio(op: dict[str, Any]) -> bool:
    return SIGNED_BY_TWILIO_TAG in op.get("tags", [])


def _component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


def has_example(document: dict[str, Any], media: dict[str, Any]) -> bool:
    """An example on the media type, or on the schema it uses: through a $ref, an Optional
    (anyOf [X, null]) or an array's items, as Swagger UI and ReDoc find it."""
    if "example" in media or "examples" in media:
        return True
    pending = [media.get("schema", {})]
    while pending:
        schema = pending.pop()
        if "$ref" in schema:
            schema = _component(document, schema["$ref"])
        if "example" in schema or "examples" in schema:
            return True
        pending += schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", [])
        if "items" in schema:
            pending.append(schema["items"])
    return False


# --- /docs and /redoc ----------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_loads_only_same_origin_assets(client: httpx.AsyncClient, page: str):
    r = await client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    # No CDN (jsdelivr, unpkg, Google Fonts...): the docs must work with no internet.
    assert "http://" not in html and "https://" not in html, html
    urls = _ATTR_URL.findall(html)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, html
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"], url
            assert len(asset.content) > 10_000, url
        elif url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css"), url
    assert "/openapi.json" in html


# --- security ------------------------------------------------------------------------------


async def test_both_security_schemes_are_declared(document: dict[str, Any]):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"].lower() == "bearer"
    assert schemes["apiKeyAuth"] == {
        **schemes["apiKeyAuth"],
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }


async def test_protected_operations_name_their_security_schemes(document: dict[str, Any]):
    declared = set(document["components"]["securitySchemes"])
    for method, path, op in operations(document):
        where = f"{method.upper()} {path}"
        if (method, path) in PUBLIC or is_signed_by_twilio(op):
            assert not op.get("security"), where
            continue
        requirements = op.get("security")
        assert requirements, f"{where} needs a credential but documents none"
        named = {name for requirement in requirements for name in requirement}
        assert named <= declared, where
        expected = {"bearerAuth"} if (method, path) in BEARER_ONLY else declared
        assert named == expected, where


async def test_protected_operations_refuse_a_request_without_credentials(
    client: httpx.AsyncClient, document: dict[str, Any]
):
    """What the document says is what the server does (routers are protected by default)."""
    some_id = str(uuid.uuid4())
    for method, path, op in operations(document):
        if not op.get("security"):
            continue
        url = re.sub(r"\{[^}]+\}", some_id, path)
        kwargs: dict[str, Any] = {"json": {}} if "requestBody" in op else {}
        r = await client.request(method.upper(), url, **kwargs)
        assert r.status_code == 401, f"{method.upper()} {path}: {r.status_code} {r.text}"
        assert r.json()["status"] == "error"


# --- descriptions and examples -------------------------------------------------------------


async def test_every_operation_has_a_summary_and_a_description(document: dict[str, Any]):
    for method, path, op in operations(document):
        assert op.get("summary"), f"{method.upper()} {path}"
        assert op.get("description"), f"{method.upper()} {path}: no docstring"


async def test_every_json_body_and_success_response_has_an_example(document: dict[str, Any]):
    missing = []
    for method, path, op in operations(document):
        where = f"{method.upper()} {path}"
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None and not has_example(document, body):
            missing.append(f"{where} request body")
        ok = op["responses"].get("200", {}).get("content", {}).get("application/json")
        if ok is not None and not has_example(document, ok):
            missing.append(f"{where} 200 response")
    assert not missing, "add a json_schema_extra example to: " + ", ".join(missing)


async def test_every_example_matches_its_own_schema(document: dict[str, Any]):
    """An example is what a reader copies: it must be a valid instance of the schema."""
    components = document["components"]
    for name, schema in components["schemas"].items():
        if "example" not in schema:
            continue
        validator = jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{name}", "components": components}
        )
        errors = [e.message for e in validator.iter_errors(schema["example"])]
        assert not errors, f"{name} example: {errors}"


# --- docs/ ---------------------------------------------------------------------------------


async def test_the_operations_page_lists_every_kind_of_job(app):
    """An operator reads the kinds a dead job can be of in docs/operations.md."""
    async with job_handlers(app.state.ctx) as handlers:
        registered = set(handlers)
    page = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_.]+)` \|", page, re.MULTILINE))
    assert listed == registered


def test_the_configuration_page_documents_every_setting():
    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \|", page, re.MULTILINE)
    documented = {name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row)}
    settings = {name.upper() for name in Settings.model_fields}
    assert settings - documented == set()
