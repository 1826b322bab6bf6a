"""Fixtures: a migrated database per test (SQLite and PostgreSQL), a real SMTP server, the app."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config

from app.config import Settings
from app.main import create_app
from tests.mailbox import Mailbox
from tests.standins.receiver import WebhookReceiver, running_receiver
from tests.standins.server import running

pytest_plugins = ["tests.standins.twilio", "tests.standins.llm", "tests.standins.hubspot"]

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_SECRET = "test-secret-key-" + "x" * 32


def run_migrations(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    run_migrations(f"sqlite:///{path}")
    return path


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2, autocommit=True):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this run, migrated; dropped at the end."""
    problem = _pg_reachable()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but not reachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {problem}")
    name = f"talkstack_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    try:
        run_migrations(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_all(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname='public' "
                "AND tablename <> 'alembic_version'"
            )
        ]
        if tables:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every test that touches the database runs on both backends, each time on a clean one."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        try:
            yield url
        finally:
            _truncate_all(url)


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    with running(Mailbox(port=free_port())) as box:
        yield box


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Tests override single settings by updating this dict before `app` is built."""
    return {}


@pytest.fixture
def settings(
    database_url: str, mailbox: Mailbox, tmp_path: Path, settings_overrides: dict[str, Any]
) -> Settings:
    mailbox.clear()
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "data_dir": tmp_path / "data",
        "public_base_url": "https://talkstack.test",
        "smtp_host": "127.0.0.1",
        "smtp_port": mailbox.port,
        "smtp_from": "Talkstack <no-reply@talkstack.test>",
        # Cheap argon2 parameters: real hashing, CI-friendly cost.
        "argon2_time_cost": 1,
        "argon2_memory_cost_kib": 8,
        "argon2_parallelism": 1,
        "rate_limit_enabled": False,
        "twilio_account_sid": None,
        "twilio_auth_token": None,
        "redis_url": None,
    }
    values.update(settings_overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A project's webhook URL: a real HTTP server on 127.0.0.1 that records each request."""
    with running_receiver() as r:
        yield r


@pytest.fixture
async def live(app: Any) -> AsyncIterator[Any]:
    """The app on a real port, for Twilio's relay WebSocket (tests/standins/twilio_relay.py)."""
    # Imported here: at the top it would import the Twilio stand-in before pytest_plugins
    # registers it, and its asserts would not be rewritten.
    from tests.standins.twilio_relay import LiveServer

    async with LiveServer(app) as server:
        yield server
