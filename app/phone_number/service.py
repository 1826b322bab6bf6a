"""Assigning Twilio numbers to agents, and finding them again."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import utcnow
from app.errors import BadRequest, Conflict, NotFound
from app.ids import parse_id
from app.models import Agent, PhoneNumber, Project, User
from app.phone import to_e164
from app.phone_number.release import (
    clear_voice_urls,
    point_here,
    release_numbers,
    unpoint_quietly,
)

_TAKEN = "This number is already assigned to an agent outside this project."


async def assign_number(
    ctx: AppContext, session: AsyncSession, *, user: User, project: Project, agent: Agent, raw: str
) -> PhoneNumber:
    """Give `agent` the number `raw`: checked with Twilio, moved within the project, unique."""
    e164 = to_e164(raw)
    existing = (
        await session.execute(select(PhoneNumber).where(PhoneNumber.e164 == e164))
    ).scalar_one_or_none()
    if existing is not None and existing.project_id != project.id:
        raise Conflict(_TAKEN, code="NUMBER_TAKEN")
    if existing is not None and existing.agent_id == agent.id:
        return existing
    # The agent's previous number (if any) is released: an agent has one number. Twilio is
    # told last, once the new number is in place.
    released = await release_numbers(
        session, PhoneNumber.agent_id == agent.id, PhoneNumber.e164 != e164
    )
    if existing is not None:
        # Moving within the project: Twilio already routes the number here.
        existing.agent_id = agent.id
        existing.updated_at = utcnow()
        await session.flush()
        await clear_voice_urls(ctx, released)
        return existing
    owned = await ctx.telephony.find_owned_number(e164)
    if owned is None:
        raise BadRequest(
            f"{e164} is neither a phone number of the configured Twilio account nor one of its "
            "verified caller ids.",
            code="NUMBER_NOT_IN_ACCOUNT",
        )
    if not owned.voice_capable:
        raise BadRequest(
            f"{e164} is on the Twilio account but cannot make or take voice calls.",
            code="NUMBER_NOT_VOICE_CAPABLE",
        )
    number = PhoneNumber(
        e164=e164,
        user_id=user.id,
        project_id=project.id,
        agent_id=agent.id,
        twilio_kind=owned.kind,
        twilio_sid=owned.sid,
    )
    session.add(number)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent request assigned it first
        raise Conflict(_TAKEN, code="NUMBER_TAKEN") from exc
    if owned.kind == "incoming":
        # Last, so a refusal above never leaves Twilio pointing at us for nothing; if this
        # fails, the whole request rolls back.
        await point_here(ctx, owned.sid)
    try:
        await clear_voice_urls(ctx, released)
    except BaseException:
        if owned.kind == "incoming":  # the request rolls back: the new number is not ours
            await unpoint_quietly(ctx, owned.sid)
        raise
    return number


async def number_of_agent(session: AsyncSession, agent_id: uuid.UUID) -> str | None:
    return (
        await session.execute(select(PhoneNumber.e164).where(PhoneNumber.agent_id == agent_id))
    ).scalar_one_or_none()


async def release_agent_number(session: AsyncSession, agent_id: uuid.UUID) -> list[str]:
    """Delete the agent's number; return the sids to give `clear_voice_urls` last."""
    return await release_numbers(session, PhoneNumber.agent_id == agent_id)


async def lookup(
    session: AsyncSession,
    *,
    user: User,
    phone_number_id: str | None,
    agent_id: str | None,
    project: Project | None,
) -> tuple[PhoneNumber, list[PhoneNumber] | None]:
    """By number id, else agent id, else project (Talkstack's precedence; the router loads the
    project only when neither id is given)."""
    none = NotFound("Phone number not found.", code="PHONE_NUMBER_NOT_FOUND")
    mine = select(PhoneNumber).where(PhoneNumber.user_id == user.id)
    if phone_number_id:
        query = mine.where(PhoneNumber.id == parse_id(phone_number_id, "Phone number"))
    elif agent_id:
        query = mine.where(PhoneNumber.agent_id == parse_id(agent_id, "Agent"))
    elif project is not None:
        numbers = list(
            (
                await session.execute(
                    mine.where(PhoneNumber.project_id == project.id).order_by(
                        PhoneNumber.created_at, PhoneNumber.id
                    )
                )
            ).scalars()
        )
        if not numbers:
            raise none
        return numbers[0], numbers
    else:
        raise BadRequest(
            "Give one of phoneNumberId, agentId or projectId.",
            code="VALIDATION_ERROR",
            errors=[
                {
                    "field": "phoneNumberId",
                    "message": "one of phoneNumberId, agentId, projectId is required",
                }
            ],
        )
    number = (await session.execute(query)).scalar_one_or_none()
    if number is None:
        raise none
    return number, None
