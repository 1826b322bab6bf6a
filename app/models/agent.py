from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class Agent(TimestampMixin, Base):
    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_project_id_created_at", "project_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    system_instruction: Mapped[str] = mapped_column(Text, nullable=False)
    voice_id: Mapped[str] = mapped_column(String(64), nullable=False)
    first_message: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(35), nullable=False, default="en-US")
    max_call_duration_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=600)
    analysis_questions: Mapped[list[dict[str, Any]]] = mapped_column(
        JSON, nullable=False, default=list
    )
    # Optional abilities beyond the Talkstack docs (additive): a human to transfer to, webhook
    # tools the LLM may call, a message left on answering machines, and what a successful
    # call is (judged by the post-call analysis).
    transfer_number: Mapped[str | None] = mapped_column(String(16))
    transfer_mode: Mapped[str] = mapped_column(
        String(8), nullable=False, default="cold", server_default="cold"
    )
    tools: Mapped[list[dict[str, Any]]] = mapped_column(
        JSON, nullable=False, default=list, server_default="[]"
    )
    voicemail_message: Mapped[str | None] = mapped_column(Text)
    success_criteria: Mapped[str | None] = mapped_column(Text)
    # Soft delete: calls keep pointing at the agent that made them.
    is_deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
