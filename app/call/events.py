"""What happens when a call changes: the project's webhook hears about it (docs/webhooks.md)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.call.schemas import CallOut
from app.integrations.webhooks.sender import CallEvent, enqueue_call_event
from app.models import Call, Project


async def call_changed(session: AsyncSession, call: Call, event: CallEvent = "call.status") -> None:
    """Queue a `call.status` event (or `event`) in the caller's transaction (delivered after
    commit).

    The project is read only here, when something changed (usually from the identity map).
    """
    project = await session.get(Project, call.project_id)
    if project is None or not project.call_status_webhook:
        return
    await session.flush()
    await enqueue_call_event(session, project=project, event=event, call=CallOut.of(call).public())
