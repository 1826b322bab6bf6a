"""Agents: the prompt, voice and behaviour of a project's phone agent."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import utcnow
from app.errors import BadRequest
from app.integrations.webhooks.url import validate_webhook_url
from app.models import Agent, PhoneNumber, Project, User
from app.phone import to_e164
from app.phone_number.release import clear_voice_urls
from app.phone_number.service import assign_number, release_agent_number
from app.project.service import ensure_webhook_secret

# API field -> model attribute, for the fields PUT /agent may change.
_FIELDS = {
    "name": "name",
    "systemInstruction": "system_instruction",
    "voice_id": "voice_id",
    "firstMessage": "first_message",
    "language": "language",
    "maxCallDurationSeconds": "max_call_duration_seconds",
    "analysisQuestions": "analysis_questions",
    "transferNumber": "transfer_number",
    "transferMode": "transfer_mode",
    "tools": "tools",
    "voicemailMessage": "voicemail_message",
    "successCriteria": "success_criteria",
}


async def _check_voice(ctx: AppContext, voice_id: str) -> None:
    if not await ctx.voices.exists(voice_id):
        raise BadRequest(
            f"voice_id {voice_id!r} is not in the voice catalogue; see GET /voices.",
            code="VOICE_NOT_FOUND",
            errors=[{"field": "voice_id", "message": "is not a known voice"}],
        )


async def _default_voice(ctx: AppContext) -> str:
    voices = await ctx.voices.list()
    if not voices:
        raise BadRequest("No voices are available; give voice_id.", code="VOICE_NOT_FOUND")
    return voices[0].voice_id


async def create_agent(
    ctx: AppContext,
    session: AsyncSession,
    *,
    user: User,
    project: Project,
    fields: dict[str, Any],
    phone_number: str | None,
) -> tuple[Agent, str | None]:
    if phone_number is not None:
        to_e164(phone_number, field="phoneNumber")  # a bad number is a 400 before anything else
    extras = await _checked_extras(ctx, fields)
    voice_id = fields.get("voice_id")
    if voice_id is not None:
        await _check_voice(ctx, voice_id)
    else:
        voice_id = await _default_voice(ctx)
    agent = Agent(
        project_id=project.id,
        name=fields["name"],
        system_instruction=fields["systemInstruction"],
        voice_id=voice_id,
        first_message=fields.get("firstMessage"),
        language=fields.get("language") or "en-US",
        max_call_duration_seconds=fields.get("maxCallDurationSeconds") or 600,
        analysis_questions=_questions(fields.get("analysisQuestions")),
        transfer_mode=fields.get("transferMode") or "cold",
        **extras,
    )
    session.add(agent)
    await session.flush()
    number = None
    if phone_number is not None:
        assigned = await assign_number(
            ctx, session, user=user, project=project, agent=agent, raw=phone_number
        )
        number = assigned.e164
    return agent, number


async def _checked_extras(ctx: AppContext, fields: dict[str, Any]) -> dict[str, Any]:
    """The model values of the optional abilities that were given, checked: the transfer
    number in E.164, each tool's URL allowed as a webhook's would be (no private hosts)."""
    out: dict[str, Any] = {}
    if "transferNumber" in fields:
        raw = fields["transferNumber"]
        out["transfer_number"] = None if raw is None else to_e164(raw, field="transferNumber")
    if "tools" in fields and fields["tools"] is not None:
        tools = _plain(fields["tools"])
        for i, tool in enumerate(tools):
            try:
                tool["url"] = await validate_webhook_url(
                    tool["url"], allow_private=ctx.settings.webhook_allow_private_hosts
                )
            except BadRequest as exc:
                reason = exc.message.removeprefix("webhookURL ")
                raise BadRequest(
                    f"tools[{i}].url {reason}",
                    code="INVALID_TOOL_URL",
                    errors=[{"field": f"tools.{i}.url", "message": reason}],
                ) from exc
        out["tools"] = tools
    for key in ("voicemailMessage", "successCriteria"):
        if key in fields:
            out[_FIELDS[key]] = fields[key]
    return out


def ensure_signing_secret(project: Project, agent: Agent) -> str | None:
    """Tool requests are signed like webhook deliveries, with the project's secret: made here
    for a project that has none yet (returned once, to be shown once)."""
    return ensure_webhook_secret(project) if agent.tools else None


def _plain(items: list[Any]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        data = item.model_dump() if isinstance(item, BaseModel) else dict(item)
        out.append({k: v for k, v in data.items() if v is not None})
    return out


def _questions(raw: list[Any] | None) -> list[dict[str, Any]]:
    out = []
    for q in raw or []:
        data = q.model_dump() if isinstance(q, BaseModel) else dict(q)
        out.append({k: v for k, v in data.items() if v is not None})
    return out


async def update_agent(
    ctx: AppContext,
    session: AsyncSession,
    *,
    user: User,
    project: Project,
    agent: Agent,
    changes: dict[str, Any],
    phone_number: str | None,
) -> None:
    if not changes and phone_number is None:
        raise BadRequest(
            "Nothing to update: give at least one of name, systemInstruction, voice_id, "
            "firstMessage, language, maxCallDurationSeconds, analysisQuestions, phoneNumber, "
            "transferNumber, transferMode, tools, voicemailMessage, successCriteria.",
            code="NOTHING_TO_UPDATE",
        )
    if "voice_id" in changes:
        await _check_voice(ctx, changes["voice_id"])
    extras = await _checked_extras(ctx, changes)
    for key, value in changes.items():
        attribute = _FIELDS[key]
        if attribute in extras:
            value = extras[attribute]
        elif key == "analysisQuestions":
            value = _questions(value)
        setattr(agent, attribute, value)
    agent.updated_at = utcnow()
    await session.flush()
    if phone_number is not None:
        await assign_number(ctx, session, user=user, project=project, agent=agent, raw=phone_number)


async def delete_agent(
    ctx: AppContext, session: AsyncSession, *, project: Project, agent: Agent
) -> None:
    now = utcnow()
    agent.is_deleted = True
    agent.deleted_at = now
    agent.updated_at = now
    released = await release_agent_number(session, agent.id)
    await session.execute(
        update(Project)
        .where(Project.id == project.id, Project.active_agent_id == agent.id)
        .values(active_agent_id=None, updated_at=now)
    )
    await session.flush()
    await clear_voice_urls(ctx, released)  # last: nothing above can fail after Twilio is told


async def list_agents(session: AsyncSession, *, project: Project) -> list[tuple[Agent, str | None]]:
    """Every live agent of the project with its number, in one query."""
    rows = await session.execute(
        select(Agent, PhoneNumber.e164)
        .outerjoin(PhoneNumber, PhoneNumber.agent_id == Agent.id)
        .where(Agent.project_id == project.id, Agent.is_deleted.is_(False))
        .order_by(Agent.created_at, Agent.id)
    )
    return [(row[0], row[1]) for row in rows]
