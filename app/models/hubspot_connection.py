from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id, utcnow


class ConnectionStatus(StrEnum):
    """A HubSpot connection's status (stored as its value): `broken` once HubSpot refused the
    token; nothing is tried until the project connects again."""

    CONNECTED = "connected"
    BROKEN = "broken"


class SyncResult(StrEnum):
    """The last sync attempt's outcome (stored as its value; `error` with the error)."""

    SUCCESS = "success"
    ERROR = "error"


class HubSpotConnection(TimestampMixin, Base):
    """A project's HubSpot account (docs/api/hubspot.md): at most one per project.

    The private-app token is stored encrypted (Fernet, with a key derived from SECRET_KEY): it
    must be usable to call HubSpot, so it cannot be a hash, and it is never shown again.
    """

    __tablename__ = "hubspot_connections"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    encrypted_token: Mapped[str] = mapped_column(Text, nullable=False)
    portal_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # connected, or broken: HubSpot refused the token (revoked), and nothing is tried until the
    # project connects again.
    status: Mapped[str] = mapped_column(
        String(16), nullable=False, default=ConnectionStatus.CONNECTED
    )
    # When the current token was given (the row's created_at is the first connection).
    connected_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    # The outcome of the last sync attempt: success or error (with the error), for /status.
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_sync_result: Mapped[str | None] = mapped_column(String(16))
    last_sync_call_sid: Mapped[str | None] = mapped_column(String(34))
    last_sync_error: Mapped[str | None] = mapped_column(Text)
