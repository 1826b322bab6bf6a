"""The reset-password page the email links to, and the talkstack-migrate console script."""

from __future__ import annotations

import sqlite3

import pytest

from app import cli
from app.config import get_settings


async def test_reset_page_serves_a_form_without_reflecting_the_token(client):
    r = await client.get("/reset-password", params={"token": "<script>alert(1)</script>"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in r.text
    assert "auth/reset-password" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "http://" not in r.text and "https://" not in r.text  # no outside assets


def test_migrate_script_builds_the_schema(tmp_path, monkeypatch: pytest.MonkeyPatch):
    db = tmp_path / "cli.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db}")
    get_settings.cache_clear()
    try:
        cli.migrate()
    finally:
        get_settings.cache_clear()
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "projects", "agents", "phone_numbers", "alembic_version"} <= tables
