"""Placing calls through Twilio, and reading them back."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.call import lifecycle
from app.call.render import missing_variables, placeholders, render
from app.context import AppContext
from app.errors import AppError, BadRequest, NotFound
from app.hubspot import service as hubspot
from app.models import Agent, Call, Project, User
from app.phone import to_e164
from app.phone_number.service import number_of_agent

log = logging.getLogger("talkstack.call")


@dataclass(frozen=True)
class PreparedCall:
    user_id: uuid.UUID
    project_id: uuid.UUID
    agent: Agent
    to: str
    from_: str
    variables: dict[str, str]
    system_instruction: str
    first_message: str | None
    hubspot_contact_id: str | None = None


async def prepare_call(
    ctx: AppContext,
    session: AsyncSession,
    *,
    user: User,
    project: Project,
    agent: Agent,
    number: str | None,
    variables: dict[str, str],
    hubspot_contact_id: str | None = None,
) -> PreparedCall:
    """Everything that can refuse the call without side effects: ids, number, variables.

    With `hubspot_contact_id` instead of `number`, the number and `hubspot.*` variables come
    from that contact of the project's HubSpot (`variables` win over them).
    """
    to = to_e164(number, field="number") if number is not None else None
    from_ = await number_of_agent(session, agent.id)
    if from_ is None:
        raise BadRequest(
            "The agent has no phone number to call from; assign one with /phone-number/add-number.",
            code="AGENT_HAS_NO_NUMBER",
        )
    if hubspot_contact_id is not None:
        to, contact_variables = await hubspot.resolve_contact(
            ctx,
            session,
            project=project,
            contact_id=hubspot_contact_id,
            properties=hubspot_properties(agent),
        )
        variables = {**contact_variables, **variables}
    if to is None:
        raise BadRequest(
            "Invalid request: give number or hubspotContactId.",
            code="VALIDATION_ERROR",
            errors=[{"field": "number", "message": "is required"}],
        )
    missing = missing_variables(
        [agent.system_instruction, agent.first_message, agent.voicemail_message], variables
    )
    if missing:
        raise BadRequest(
            f"dynamicVariables is missing {', '.join(missing)}, used by the agent's "
            "systemInstruction, firstMessage or voicemailMessage.",
            code="MISSING_VARIABLES",
            missing=missing,
        )
    ctx.telephony.ensure_configured()  # refused before anything is stored
    return PreparedCall(
        user_id=user.id,
        project_id=project.id,
        agent=agent,
        to=to,
        from_=from_,
        variables=variables,
        system_instruction=render(agent.system_instruction, variables) or "",
        first_message=render(agent.first_message, variables),
        hubspot_contact_id=hubspot_contact_id,
    )


def hubspot_properties(agent: Agent) -> list[str]:
    """The contact properties the agent's prompts use ({{hubspot.<property>}})."""
    prefix = hubspot.VARIABLE_PREFIX
    return [
        name[len(prefix) :]
        for name in (
            placeholders(agent.system_instruction)
            + placeholders(agent.first_message)
            + placeholders(agent.voicemail_message)
        )
        if name.startswith(prefix)
    ]


def callback_url(ctx: AppContext, call_id: uuid.UUID, kind: str) -> str:
    """Twilio's URLs for one call carry our call id, so a callback that races the Call SID
    being stored still finds its row."""
    return f"{ctx.settings.public_base_url}/twilio/calls/{call_id}/{kind}"


async def place_call(
    ctx: AppContext, prepared: PreparedCall, *, batch_id: uuid.UUID | None = None
) -> Call:
    """Write the call, commit, then ask Twilio; the row records whatever Twilio answered.

    This runs its own transactions (not the request's): the row must be committed before
    Twilio is asked, because Twilio's first callback can arrive before this request ends.
    """
    call = lifecycle.outbound(
        user_id=prepared.user_id,
        project_id=prepared.project_id,
        agent=prepared.agent,
        batch_id=batch_id,
        to=prepared.to,
        from_=prepared.from_,
        variables=prepared.variables,
        system_instruction=prepared.system_instruction,
        first_message=prepared.first_message,
        hubspot_contact_id=prepared.hubspot_contact_id,
    )
    async with ctx.sessionmaker() as session:
        session.add(call)
        await session.commit()
    try:
        placed = await ctx.telephony.create_call(
            to=prepared.to,
            from_=prepared.from_,
            twiml_url=callback_url(ctx, call.id, "twiml"),
            status_callback=callback_url(ctx, call.id, "status"),
            recording_status_callback=callback_url(ctx, call.id, "recording"),
            amd_callback=callback_url(ctx, call.id, "amd"),
            time_limit_seconds=prepared.agent.max_call_duration_seconds,
            detect_message_end=bool(prepared.agent.voicemail_message),
        )
    except AppError as exc:
        async with ctx.sessionmaker() as session:
            row = await session.get(Call, call.id)
            assert row is not None
            await lifecycle.refused(session, row, exc)
            await session.commit()
        log.info("call %s refused by Twilio: %s", call.id, exc.code)
        raise
    async with ctx.sessionmaker() as session:
        row = await session.get(Call, call.id, with_for_update=True)
        assert row is not None
        await lifecycle.placed(session, row, placed.sid, prepared.agent)
        await session.commit()
        return row


async def get_call(session: AsyncSession, *, user: User, sid: str, project: Project | None) -> Call:
    """The caller's call by SID, of a live project of theirs (of `project`, when given)."""
    not_found = NotFound("Call not found.", code="CALL_NOT_FOUND")
    query = (
        select(Call)
        .join(Project, Project.id == Call.project_id)
        .where(Call.call_sid == sid, Call.user_id == user.id, Project.is_deleted.is_(False))
    )
    if project is not None:
        query = query.where(Call.project_id == project.id)
    call = (await session.execute(query)).scalar_one_or_none()
    if call is None:
        raise not_found
    return call
