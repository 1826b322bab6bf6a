from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class BatchStatus(StrEnum):
    """A batch's status: running ⇄ paused → completed, or canceled (docs/api/batch-calls.md).

    The API's schema lists the same values (app/batch/schemas.py; a test keeps them equal).
    """

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELED = "canceled"


class RowState(StrEnum):
    """A batch row's state, stored and shown as its value; BatchRow below describes its
    course, app/batch/lifecycle.py moves it."""

    QUEUED = "queued"
    DIALING = "dialing"
    DIALED = "dialed"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"


class Batch(TimestampMixin, Base):
    """One uploaded spreadsheet of calls (docs/api/batch-calls.md)."""

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
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=BatchStatus.RUNNING)
    filename: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    accepted: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    rejected: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Campaign settings (app/batch/campaign.py), as the API shows them; null: none.
    call_window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    retry: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The `batch.dial` job that carries the batch on (null: none is queued or running). Only it
    # dials and queues the next slice, so pausing, resuming or a retry never starts a second chain.
    dial_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class BatchRow(Base):
    """One row of a batch: validated at upload, then dialed exactly once per attempt.

    States: `queued` → `dialing` (claimed: the call row exists, Twilio is being asked) →
    `dialed` (Call SID stored) or `failed` (Twilio refused); `rejected` at upload; `canceled`.
    A `dialed` row whose call ends with an outcome the batch retries is `queued` again, with no
    call: the next claim makes a new call (app/batch/outcome.py).
    """

    __tablename__ = "batch_rows"
    __table_args__ = (
        UniqueConstraint("batch_id", "row"),
        # The next rows to dial, in file order; and the rows of one state for the totals.
        Index("ix_batch_rows_batch_state_row", "batch_id", "state", "row"),
        # The row a finished call belongs to.
        Index("ix_batch_rows_call_id", "call_id"),
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
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=RowState.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    # Claims of the current call (a dial Twilio may not have placed is claimed again).
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Calls made for the row: the retry rules' attempts.
    call_attempts: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    # The final status of the row's last call (shown once no retry is pending).
    outcome: Mapped[str | None] = mapped_column(String(16))
    call_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("calls.id", ondelete="SET NULL")
    )
    call_sid: Mapped[str | None] = mapped_column(String(34))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
