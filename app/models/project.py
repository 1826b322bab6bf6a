from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class Project(TimestampMixin, Base):
    __tablename__ = "projects"
    __table_args__ = (
        # Names are unique per user among live projects only: a deleted project frees its name.
        Index(
            "uq_projects_user_id_name_live",
            "user_id",
            "name",
            unique=True,
            sqlite_where=text("NOT is_deleted"),
            postgresql_where=text("NOT is_deleted"),
        ),
        Index("ix_projects_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="ACTIVE")
    is_deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    call_status_webhook: Mapped[str | None] = mapped_column(String(2048))
    # Signs webhook deliveries (docs/webhooks.md). It must be usable to sign, so it cannot be a
    # hash; it is shown to the user once, when first created.
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    # The secret a rotation replaced, kept (the same way, for the same reason) so it signs
    # alongside the new one until `webhook_secret_previous_expires_at`: receivers switch over
    # without missing a delivery.
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(100))
    webhook_secret_previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    active_agent_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("agents.id", use_alter=True, ondelete="SET NULL")
    )
