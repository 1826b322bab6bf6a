from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, Numeric, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class CallStatus(StrEnum):
    """A call's status: Twilio's call statuses, then our refinements of `completed`.

    Members are str: they are stored, compared with what Twilio sends and shown as they are.
    The API's schema lists the same values (app/call/schemas.py); app/call/status.py holds
    the rules between them.
    """

    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"
    # Ours: a completed call answered by a machine, or ended by the agent on silence.
    VOICEMAIL = "voicemail"
    SILENCE = "silence"


class AnalysisState(StrEnum):
    """Where a call's analysis stands (app/call/lifecycle.py): the conversation is over and
    the analysis waits for the call's final status, or the analysis job is queued."""

    WAITING = "waiting"
    QUEUED = "queued"


class Call(TimestampMixin, Base):
    """One phone call, outbound or inbound. `created_at` is its start time for history."""

    __tablename__ = "calls"
    __table_args__ = (
        # Call history: newest first within a project, optionally narrowed by one filter.
        Index("ix_calls_project_created", "project_id", "created_at", "id"),
        Index("ix_calls_project_status_created", "project_id", "status", "created_at", "id"),
        Index("ix_calls_project_to_created", "project_id", "to_number", "created_at", "id"),
        Index("ix_calls_project_from_created", "project_id", "from_number", "created_at", "id"),
        Index("ix_calls_project_ended", "project_id", "ended_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    # Null only between writing the row and Twilio answering the create request.
    call_sid: Mapped[str | None] = mapped_column(String(34), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    agent_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("agents.id", ondelete="SET NULL")
    )
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    direction: Mapped[str] = mapped_column(String(10), nullable=False, default="outbound")
    to_number: Mapped[str] = mapped_column(String(16), nullable=False)
    from_number: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    answered_by: Mapped[str | None] = mapped_column(String(32))
    ended_reason: Mapped[str | None] = mapped_column(String(64))
    seconds: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[Decimal | None] = mapped_column(Numeric(12, 5))
    cost_unit: Mapped[str | None] = mapped_column(String(8))
    recording_urls: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    dynamic_variables: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    system_instruction: Mapped[str] = mapped_column(Text, nullable=False, default="")
    first_message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    transcript: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Twilio's SequenceNumber of the last status callback applied (callbacks can arrive late).
    last_sequence: Mapped[int] = mapped_column(Integer, nullable=False, default=-1)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The human the agent handed the call to (the agent's transferNumber at the time); kept
    # when a warm transfer failed and the callee went back to the agent.
    transferred_to: Mapped[str | None] = mapped_column(String(16))
    # A warm transfer's call to the human, a Twilio call (and bill) of its own: its Call SID,
    # its latest status, and once it is over its duration and price.
    transfer_call_sid: Mapped[str | None] = mapped_column(String(34))
    transfer_status: Mapped[str | None] = mapped_column(String(16))
    transfer_seconds: Mapped[int | None] = mapped_column(Integer)
    transfer_cost: Mapped[Decimal | None] = mapped_column(Numeric(12, 5))
    # When the human, briefed, was put through to the conference (the briefing's redirect, or
    # Twilio's participant-join): a leg that ends `completed` without it hung up during the
    # briefing, and the callee goes back to the agent.
    transfer_joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Null until a conversation ends; then AnalysisState: the analysis job is queued by whichever
    # comes second, the conversation's end or the call's final status, in its transaction.
    analysis_state: Mapped[str | None] = mapped_column(String(16))
    # HubSpot (app/hubspot): the contact called (given to makeCall, or found by the number) and
    # the call engagement logged for this call, so a retried sync updates instead of duplicating.
    hubspot_contact_id: Mapped[str | None] = mapped_column(String(32))
    hubspot_call_id: Mapped[str | None] = mapped_column(String(32))
    # When a HubSpot sync last read this call: a recording that comes later needs another sync,
    # and a second sync waits while the first may still be creating the engagement.
    hubspot_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
