"""Declarative base and UTC timestamps; the engine and the request-scoped session
(app/db/engine.py); the fast point reads of the credential lookup (app/db/pointread.py). Every
name is importable from `app.db`, as when this was one module.

UTCDateTime stays here: Alembic writes a custom type into new migrations by its module
(`app.db.UTCDateTime`, as the revisions in migrations/versions/ have it).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.db.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    make_engine,
    make_sessionmaker,
    session_scope,
)
from app.db.pointread import (
    InlineSQLiteReader,
    PointReader,
    PointRow,
    PooledReader,
    point_reader,
)

__all__ = [
    "NAMING_CONVENTION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Base",
    "InlineSQLiteReader",
    "PointReader",
    "PointRow",
    "PooledReader",
    "TimestampMixin",
    "UTCDateTime",
    "make_engine",
    "make_sessionmaker",
    "new_id",
    "point_reader",
    "session_scope",
    "utcnow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )


def new_id() -> uuid.UUID:
    return uuid.uuid4()
