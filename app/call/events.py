"""What happens when a call changes: the project's webhook hears about it (CONTRACT.md §8)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.call.schemas import CallOut
from app.jobs.webhooks import enqueue_call_event
from app.models import Call, Project


async def call_changed(session: AsyncSession, project: Project, call: Call) -> None:
    """Queue a `call.status` event in the caller's transaction (delivered after commit)."""
    await session.flush()
    await enqueue_call_event(
        session, project=project, event="call.status", call=CallOut.of(call).public()
    )
