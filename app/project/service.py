"""Projects: create, list, update and delete them; their webhook and their active agent.

The caller's project arrives loaded: ownership is resolved by the router (app/ownership.py).
"""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import utcnow
from app.errors import BadRequest, Conflict, NotFound
from app.ids import parse_id
from app.integrations.webhooks.url import validate_webhook_url
from app.models import Agent, PhoneNumber, Project, User
from app.phone_number.release import clear_voice_urls, release_numbers


def _name_taken(name: str) -> Conflict:
    return Conflict(f"You already have a project named {name!r}.", code="PROJECT_NAME_TAKEN")


async def _flush_name(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:  # the live-name unique index: a race or a duplicate
        raise _name_taken(name) from exc


async def create_project(
    session: AsyncSession, *, user: User, name: str, description: str
) -> Project:
    if await _live_name_exists(session, user=user, name=name):
        raise _name_taken(name)
    project = Project(user_id=user.id, name=name, description=description)
    session.add(project)
    await _flush_name(session, name)
    return project


async def _live_name_exists(
    session: AsyncSession, *, user: User, name: str, exclude: uuid.UUID | None = None
) -> bool:
    query = select(Project.id).where(
        Project.user_id == user.id, Project.name == name, Project.is_deleted.is_(False)
    )
    if exclude is not None:
        query = query.where(Project.id != exclude)
    return (await session.execute(query.limit(1))).first() is not None


async def list_projects(session: AsyncSession, *, user: User) -> list[Project]:
    result = await session.execute(
        select(Project)
        .where(Project.user_id == user.id, Project.is_deleted.is_(False))
        .order_by(Project.created_at.desc(), Project.id.desc())
    )
    return list(result.scalars())


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def ensure_webhook_secret(project: Project) -> str | None:
    """Give the project its webhook secret (which signs webhook deliveries and tool requests)
    if it has none yet; return it only when new, to be shown once."""
    if project.webhook_secret is not None:
        return None
    project.webhook_secret = new_webhook_secret()
    project.updated_at = utcnow()
    return project.webhook_secret


async def set_webhook(ctx: AppContext, project: Project, url: str) -> str | None:
    """Point the project's call-status webhook at `url`; return the secret if newly created."""
    project.call_status_webhook = await validate_webhook_url(
        url, allow_private=ctx.settings.webhook_allow_private_hosts
    )
    project.updated_at = utcnow()
    return ensure_webhook_secret(project)


async def update_project(
    ctx: AppContext,
    session: AsyncSession,
    *,
    user: User,
    project: Project,
    name: str | None,
    description: str | None,
    webhook_url: str | None,
) -> str | None:
    if name is None and description is None and webhook_url is None:
        raise BadRequest(
            "Nothing to update: give name, description or webhookUrl.", code="NOTHING_TO_UPDATE"
        )
    secret = None
    if webhook_url is not None:
        secret = await set_webhook(ctx, project, webhook_url)
    if name is not None and name != project.name:
        if await _live_name_exists(session, user=user, name=name, exclude=project.id):
            raise _name_taken(name)
        project.name = name
    if description is not None:
        project.description = description
    project.updated_at = utcnow()
    await _flush_name(session, project.name)
    return secret


async def delete_project(
    ctx: AppContext, session: AsyncSession, *, user: User, project: Project, cascade: bool
) -> None:
    agents = (
        await session.execute(
            select(func.count())
            .select_from(Agent)
            .where(Agent.project_id == project.id, Agent.is_deleted.is_(False))
        )
    ).scalar_one()
    numbers = (
        await session.execute(
            select(func.count())
            .select_from(PhoneNumber)
            .where(PhoneNumber.project_id == project.id)
        )
    ).scalar_one()
    if (agents or numbers) and not cascade:
        raise Conflict(
            f"The project still has {_plural(agents, 'agent')} and "
            f"{_plural(numbers, 'phone number')}; "
            'delete them first or send {"cascade": true}.',
            code="PROJECT_NOT_EMPTY",
            agents=agents,
            phoneNumbers=numbers,
        )
    now = utcnow()
    released = await release_numbers(session, PhoneNumber.project_id == project.id)
    await session.execute(
        update(Agent)
        .where(Agent.project_id == project.id, Agent.is_deleted.is_(False))
        .values(is_deleted=True, deleted_at=now, updated_at=now)
    )
    project.is_deleted = True
    project.deleted_at = now
    project.active_agent_id = None
    project.updated_at = now
    if user.active_project_id == project.id:
        user.active_project_id = None
    await session.flush()
    await clear_voice_urls(ctx, released)  # last: nothing above can fail after Twilio is told


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def get_active_agent(project: Project) -> uuid.UUID:
    if project.active_agent_id is None:
        raise NotFound("The project has no active agent.", code="NO_ACTIVE_AGENT")
    return project.active_agent_id


async def set_active_agent(session: AsyncSession, *, project: Project, agent: Agent) -> Project:
    project.active_agent_id = agent.id
    project.updated_at = utcnow()
    await session.flush()
    return project


async def remove_active_agent(session: AsyncSession, *, user: User, agent_id: str) -> None:
    """Clear `agent_id` as active agent of whichever of the caller's projects has it."""
    aid = parse_id(agent_id, "Agent")
    project = (
        await session.execute(
            select(Project).where(
                Project.user_id == user.id,
                Project.active_agent_id == aid,
                Project.is_deleted.is_(False),
            )
        )
    ).scalar_one_or_none()
    if project is None:
        raise NotFound(
            "No project of yours has this agent as its active agent.", code="NOT_ACTIVE_AGENT"
        )
    project.active_agent_id = None
    project.updated_at = utcnow()
    await session.flush()
