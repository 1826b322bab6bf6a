"""Project lookups every domain shares: ownership is checked here and nowhere else."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import Project, User


def parse_id(raw: str | uuid.UUID, what: str) -> uuid.UUID:
    """An id that is not a UUID names nothing: the same 404 as a missing object."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError) as exc:
        raise NotFound(f"{what} not found.", code=f"{what.upper()}_NOT_FOUND") from exc


async def get_owned_project(
    session: AsyncSession, *, user: User, project_id: str | uuid.UUID
) -> Project:
    """The caller's live project; another user's project is indistinguishable from none."""
    pid = parse_id(project_id, "Project")
    project = (
        await session.execute(
            select(Project).where(
                Project.id == pid, Project.user_id == user.id, Project.is_deleted.is_(False)
            )
        )
    ).scalar_one_or_none()
    if project is None:
        raise NotFound("Project not found.", code="PROJECT_NOT_FOUND")
    return project
