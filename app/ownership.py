"""Ownership, checked here and nowhere else: the caller's live project, agent or batch, or a
404 that does not tell another user's object from a missing one.

Routers resolve ownership and hand services the loaded objects; services never look it up.
An id in the path is resolved by a dependency (OwnedProject, LockedBatch). An id in a JSON
body or a form, or one whose check must wait for another (GET /call/batch-call/{batchId}
checks pageToken first), is resolved by one call at the top of the handler (owned_project,
owned_agent, owned_batch): a dependency reading the body would have to declare it as a second
body parameter, which changes the OpenAPI document, or run before FastAPI validates it, which
would answer a malformed body with a 404 instead of its 400.

The lookups query the models directly (one indexed SELECT each), so that this module, like
app/deps.py, imports no domain package.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.deps import CurrentUser, SessionDep
from app.errors import NotFound
from app.ids import parse_id
from app.models import Agent, Batch, Project, User


def _project_not_found() -> NotFound:
    return NotFound("Project not found.", code="PROJECT_NOT_FOUND")


async def owned_project(
    session: AsyncSession, *, user: User, project_id: str | uuid.UUID
) -> Project:
    """The caller's live project."""
    pid = parse_id(project_id, "Project")
    project = (
        await session.execute(
            select(Project).where(
                Project.id == pid, Project.user_id == user.id, Project.is_deleted.is_(False)
            )
        )
    ).scalar_one_or_none()
    if project is None:
        raise _project_not_found()
    return project


async def owned_agent(
    session: AsyncSession, *, user: User, project_id: str | uuid.UUID, agent_id: str | uuid.UUID
) -> tuple[Project, Agent]:
    """A live agent of the caller's live project, and that project: one query for both. The
    project is checked first, so an unknown project is PROJECT_NOT_FOUND whatever the agent."""
    pid = parse_id(project_id, "Project")
    try:
        aid = parse_id(agent_id, "Agent")
    except NotFound:
        await owned_project(session, user=user, project_id=pid)
        raise
    row = (
        await session.execute(
            select(Project, Agent)
            .outerjoin(
                Agent,
                and_(Agent.id == aid, Agent.project_id == Project.id, Agent.is_deleted.is_(False)),
            )
            .where(Project.id == pid, Project.user_id == user.id, Project.is_deleted.is_(False))
        )
    ).first()
    if row is None:
        raise _project_not_found()
    project, agent = row
    if agent is None:
        raise NotFound("Agent not found.", code="AGENT_NOT_FOUND")
    return project, agent


async def owned_batch(
    session: AsyncSession, *, user: User, batch_id: str, lock: bool = False
) -> Batch:
    """The caller's batch, while its project is live (a batch goes with its project); with
    `lock`, its row locked for the rest of the transaction (pause, resume and cancel)."""
    query = (
        select(Batch)
        .join(Project, Project.id == Batch.project_id)
        .where(
            Batch.id == parse_id(batch_id, "batch"),
            Batch.user_id == user.id,
            Project.user_id == user.id,
            Project.is_deleted.is_(False),
        )
    )
    if lock:
        query = query.with_for_update(of=Batch)
    batch = (await session.execute(query)).scalar_one_or_none()
    if batch is None:
        raise NotFound("Batch not found.", code="BATCH_NOT_FOUND")
    return batch


async def owned_project_from_path(
    project_id: str, user: CurrentUser, session: SessionDep
) -> Project:
    return await owned_project(session, user=user, project_id=project_id)


async def locked_batch_from_path(batchId: str, user: CurrentUser, session: SessionDep) -> Batch:
    return await owned_batch(session, user=user, batch_id=batchId, lock=True)


OwnedProject = Annotated[Project, Depends(owned_project_from_path)]
LockedBatch = Annotated[Batch, Depends(locked_batch_from_path)]
