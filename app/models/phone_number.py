from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, new_id


class PhoneNumber(TimestampMixin, Base):
    """A number assigned to an agent. The row exists while the assignment does.

    `e164` is unique across all users: a number can ring only one agent, and the database,
    not a check-then-insert, decides who gets it when two requests race.
    """

    __tablename__ = "phone_numbers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    e164: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True
    )
    agent_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    # "incoming" (a Twilio number we can route) or "caller_id" (a verified outgoing caller id).
    twilio_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    twilio_sid: Mapped[str] = mapped_column(String(34), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="AVAILABLE")
