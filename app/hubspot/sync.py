"""Logging one finished call in HubSpot: find or create the contact, then the call engagement.

The ids HubSpot gives are stored on the call as soon as they exist, so a retried sync reuses
the contact and updates the engagement instead of logging the call twice.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update

from app.context import AppContext
from app.integrations.hubspot.client import CRM, HubSpotNotFound, normalise
from app.models import Call
from app.models.call import CallStatus
from app.timefmt import iso_ms

# Our statuses as HubSpot's hs_call_status values.
HUBSPOT_STATUS: dict[str, str] = {
    CallStatus.QUEUED: "QUEUED",
    CallStatus.INITIATED: "CONNECTING",
    CallStatus.RINGING: "RINGING",
    CallStatus.IN_PROGRESS: "IN_PROGRESS",
    CallStatus.COMPLETED: "COMPLETED",
    CallStatus.BUSY: "BUSY",
    CallStatus.FAILED: "FAILED",
    CallStatus.NO_ANSWER: "NO_ANSWER",
    CallStatus.CANCELED: "CANCELED",
    CallStatus.VOICEMAIL: "COMPLETED",
    CallStatus.SILENCE: "COMPLETED",
}
# HubSpot caps a property value at 65,536 characters; the transcript is cut to stay below.
MAX_BODY_CHARS = 60_000


@dataclass(frozen=True)
class CallFacts:
    """What HubSpot is told about a call, read in one short transaction."""

    id: uuid.UUID
    project_id: uuid.UUID
    call_sid: str | None
    direction: str
    to_number: str
    from_number: str
    status: str
    ended_reason: str | None
    seconds: int | None
    recording_urls: list[str]
    data: dict[str, Any]
    transcript: list[dict[str, Any]]
    started_at: datetime
    hubspot_contact_id: str | None
    hubspot_call_id: str | None

    @classmethod
    def of(cls, call: Call) -> CallFacts:
        return cls(
            id=call.id,
            project_id=call.project_id,
            call_sid=call.call_sid,
            direction=call.direction,
            to_number=call.to_number,
            from_number=call.from_number,
            status=call.status,
            ended_reason=call.ended_reason,
            seconds=call.seconds,
            recording_urls=list(call.recording_urls),
            data=dict(call.data),
            transcript=list(call.transcript),
            started_at=call.created_at,
            hubspot_contact_id=call.hubspot_contact_id,
            hubspot_call_id=call.hubspot_call_id,
        )

    @property
    def counterpart(self) -> str:
        """The other party: the callee of an outbound call, the caller of an inbound one."""
        return self.to_number if self.direction == "outbound" else self.from_number


async def sync_call(ctx: AppContext, client: CRM, facts: CallFacts) -> str:
    """Log (or update) the call in HubSpot; returns the engagement's id. Raises HubSpotError."""
    contact_id = facts.hubspot_contact_id
    if contact_id is None:
        contact_id = await _contact_for(client, facts.counterpart)
        if contact_id is not None:
            await _store(ctx, facts.id, hubspot_contact_id=contact_id)
    properties = engagement(facts)
    if facts.hubspot_call_id is not None:
        try:
            await client.update_call(facts.hubspot_call_id, properties)
        except HubSpotNotFound:
            pass  # deleted in HubSpot since: log the call again
        else:
            return facts.hubspot_call_id
    call_id = await client.create_call(properties, contact_id=contact_id)
    await _store(ctx, facts.id, hubspot_call_id=call_id)
    return call_id


async def _contact_for(client: CRM, number: str) -> str | None:
    """The contact with this number, created if there is none; None for a number that is not
    one (an anonymous caller): the call is then logged without a contact."""
    e164 = normalise(number)
    if e164 is None:
        return None
    contact = await client.find_contact(e164)
    if contact is None:
        contact = await client.create_contact({"phone": e164})
    return contact.id


async def _store(ctx: AppContext, call_id: uuid.UUID, **values: Any) -> None:
    async with ctx.sessionmaker() as session, session.begin():
        await session.execute(update(Call).where(Call.id == call_id).values(**values))


def engagement(facts: CallFacts) -> dict[str, str]:
    """The call engagement's properties (HubSpot's default calling properties)."""
    outbound = facts.direction == "outbound"
    properties = {
        "hs_timestamp": iso_ms(facts.started_at) or "",
        "hs_call_title": (
            f"Call to {facts.to_number}" if outbound else f"Call from {facts.from_number}"
        ),
        "hs_call_direction": "OUTBOUND" if outbound else "INBOUND",
        "hs_call_status": HUBSPOT_STATUS.get(facts.status, "COMPLETED"),
        "hs_call_duration": str((facts.seconds or 0) * 1000),
        "hs_call_from_number": facts.from_number,
        "hs_call_to_number": facts.to_number,
        "hs_call_body": body(facts),
    }
    # HubSpot accepts only HTTPS recording URLs (and plays .mp3 and .wav).
    recording = next((u for u in facts.recording_urls if u.startswith("https://")), None)
    if recording is not None:
        properties["hs_call_recording_url"] = recording
    return properties


def body(facts: CallFacts) -> str:
    """The engagement's notes (rich text): outcome, summary, answers, then the transcript."""
    outcome = facts.status + (
        f" ({facts.ended_reason})"
        if facts.ended_reason and facts.ended_reason != facts.status
        else ""
    )
    parts = [f"<p><strong>Talkstack call</strong> {_e(facts.call_sid or '')}: {_e(outcome)}</p>"]
    summary = facts.data.get("summary")
    if isinstance(summary, str) and summary:
        parts.append(f"<p><strong>Summary</strong><br>{_e(summary)}</p>")
    sentiment = facts.data.get("sentiment")
    if isinstance(sentiment, str) and sentiment:
        parts.append(f"<p><strong>Sentiment</strong>: {_e(sentiment)}</p>")
    successful = facts.data.get("successful")
    if isinstance(successful, bool):
        parts.append(f"<p><strong>Successful</strong>: {'yes' if successful else 'no'}</p>")
    answers = facts.data.get("answers")
    if isinstance(answers, list) and answers:
        items = "".join(
            f"<li>{_e(str(a.get('question', '')))}: {_e(str(a.get('answer', '')))}</li>"
            for a in answers
            if isinstance(a, dict)
        )
        parts.append(f"<p><strong>Answers</strong></p><ul>{items}</ul>")
    head = "".join(parts)
    lines = transcript_lines(facts.transcript)
    if not lines:
        return head
    kept: list[str] = []
    room = MAX_BODY_CHARS - len(head) - 100
    for line in lines:
        if room - len(line) < 0:
            kept.append("… (transcript shortened)")
            break
        kept.append(line)
        room -= len(line) + 4
    return head + "<p><strong>Transcript</strong><br>" + "<br>".join(kept) + "</p>"


def transcript_lines(transcript: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for turn in transcript:
        if turn.get("role") == "user":
            said = (
                f"(pressed {turn['dtmf']} on the keypad)"
                if turn.get("dtmf")
                else str(turn.get("text", ""))
            )
            lines.append(f"<strong>Callee</strong>: {_e(said)}")
        elif turn.get("role") == "tool":
            used = f"(used {turn.get('name', 'a tool')}: {turn.get('result', '')})"
            lines.append(f"<strong>Agent</strong>: {_e(used)}")
        else:
            cut = " (interrupted)" if turn.get("interrupted") else ""
            lines.append(f"<strong>Agent</strong>{cut}: {_e(str(turn.get('text', '')))}")
    return lines


def _e(text: str) -> str:
    return html.escape(text, quote=False)
