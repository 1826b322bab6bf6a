"""API keys and the active project."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.credentials import ActiveProject, Caller
from app.db import utcnow
from app.errors import NotFound
from app.models import Project, User
from app.security import new_api_key, sha256_hex


async def generate_api_key(session: AsyncSession, *, user: User) -> str:
    """A new key replaces the old one at once; only its hash is kept."""
    key = new_api_key()
    user.api_key_hash = sha256_hex(key)
    user.api_key_created_at = utcnow()
    await session.flush()
    return key


async def set_active_project(session: AsyncSession, *, user: User, project: Project) -> None:
    user.active_project_id = project.id
    user.updated_at = utcnow()
    await session.flush()


def get_active_project(caller: Caller) -> ActiveProject:
    """Read with the caller's credential (a live project of theirs, or none): no query."""
    if caller.active_project is None:  # none set, or the active project was deleted since
        raise NotFound("No active project is set.", code="NO_ACTIVE_PROJECT")
    return caller.active_project
