from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class Batch(TimestampMixin, Base):
    """One uploaded spreadsheet of calls (CONTRACT.md §7)."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_project_created", "project_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    agent_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
    )
    # running → completed, or canceled.
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    filename: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    accepted: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    rejected: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BatchRow(Base):
    """One row of a batch: validated at upload, then dialed exactly once.

    States: `queued` → `dialing` (claimed: the call row exists, Twilio is being asked) →
    `dialed` (Call SID stored) or `failed` (Twilio refused); `rejected` at upload; `canceled`.
    """

    __tablename__ = "batch_rows"
    __table_args__ = (
        UniqueConstraint("batch_id", "row"),
        # The next rows to dial, in file order; and the rows of one state for the totals.
        Index("ix_batch_rows_batch_state_row", "batch_id", "state", "row"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    batch_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False
    )
    # The row's line in the file (the header is line 1).
    row: Mapped[int] = mapped_column(Integer, nullable=False)
    # Empty for a row that names a HubSpot contact instead: its number is read at dial time.
    number: Mapped[str] = mapped_column(String(64), nullable=False)
    hubspot_contact_id: Mapped[str | None] = mapped_column(String(32))
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    call_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("calls.id", ondelete="SET NULL")
    )
    call_sid: Mapped[str | None] = mapped_column(String(34))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
