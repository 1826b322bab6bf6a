"""The Alembic migrations build exactly the schema the models describe, and run both ways.

Sync tests on purpose: migrations/env.py runs its own event loop (asyncio.run).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.db import Base
from tests.conftest import IN_CI, PG_ADMIN_URL, ROOT, _pg_reachable


def _config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


def _sync_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _diff(url: str) -> list[Any]:
    """What autogenerate would add to a migration, with migrations/env.py's options."""
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "target_metadata": Base.metadata,
                    "render_as_batch": conn.dialect.name == "sqlite",
                },
            )
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with no migration applied yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    problem = _pg_reachable()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but not reachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {problem}")
    name = f"talkstack_mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_there_is_one_head():
    heads = ScriptDirectory.from_config(_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads


def test_models_and_migrations_agree(database_url: str):
    """The test database (migrated to head by the fixtures) is what the models say."""
    assert _diff(database_url) == []


def test_upgrade_downgrade_upgrade(fresh_database: str):
    cfg = _config(fresh_database)
    model_tables = set(Base.metadata.tables)

    command.upgrade(cfg, "head")
    assert model_tables <= _tables(fresh_database)
    assert _diff(fresh_database) == []

    command.downgrade(cfg, "base")
    assert _tables(fresh_database) - {"alembic_version"} == set()
    assert _diff(fresh_database) != []  # the comparison does see a difference

    command.upgrade(cfg, "head")
    assert model_tables <= _tables(fresh_database)
    assert _diff(fresh_database) == []
