"""Console scripts installed with the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def migrate() -> None:
    """`talkstack-migrate`: bring the database of DATABASE_URL to the latest schema."""
    command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
