from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class DeliveryStatus(StrEnum):
    """A delivery's status (stored, and shown by GET /project/{id}/webhook-deliveries, as its
    value): pending -> delivered | failed (retries left) -> ... | dead (given up)."""

    PENDING = "pending"  # not tried yet (or redelivered and not tried since)
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # the last attempt failed; another is scheduled (next_attempt_at)
    DEAD = "dead"  # every attempt failed, or there was nowhere to send it: given up


class WebhookDelivery(TimestampMixin, Base):
    """One call event for a project's webhook, and how sending it went (the user's view).

    The `jobs` row does the sending and is purged after retention; this row stays, with the
    exact body, so an event can be listed and redelivered later. Written in the transaction
    that queues the job; updated by the job after every attempt. Settled rows (delivered,
    dead) are deleted `WEBHOOK_DELIVERY_RETENTION_DAYS` after their event
    (app/project/deliveries.py purge_expired).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The project's deliveries, newest first, in keyset pages.
        Index("ix_webhook_deliveries_project_created", "project_id", "created_at", "id"),
        # The oldest first, for the purge of expired ones.
        Index("ix_webhook_deliveries_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    # The job of the current attempt series; no foreign key: finished jobs are purged.
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    event_id: Mapped[str] = mapped_column(String(40), nullable=False)
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    call_sid: Mapped[str | None] = mapped_column(String(64))
    # The exact bytes every attempt sends (and signs), as UTF-8 text.
    body: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
