from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin, UTCDateTime, new_id


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    # Stored lower-cased, so uniqueness is case-insensitive on every backend.
    email: Mapped[str] = mapped_column(String(254), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    verified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    company_name: Mapped[str | None] = mapped_column(String(200))
    active_project_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("projects.id", use_alter=True, ondelete="SET NULL")
    )
    # Bumped on password change/reset: access tokens carry it and die with the old password.
    token_version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    # SHA-256 of the API key: a 256-bit random key needs no slow hash, and a unique index
    # makes every x-api-key request one indexed lookup.
    api_key_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    api_key_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The one live verification code: an HMAC, its expiry and the wrong tries against it.
    verification_code_hash: Mapped[str | None] = mapped_column(String(64))
    verification_code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verification_failed_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
