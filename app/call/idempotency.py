"""`Idempotency-Key`: a retried request with the same key and body gets the first answer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.errors import BadRequest, Conflict
from app.models import IdempotencyKey, User

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: dict[str, Any]


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def check_key(key: str) -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.",
            code="INVALID_IDEMPOTENCY_KEY",
        )
    return key


async def begin(
    maker: async_sessionmaker[AsyncSession], *, user: User, scope: str, key: str, digest: str
) -> Replay | None:
    """Reserve the key (committed at once, so a concurrent duplicate sees it), or replay.

    Returns the stored answer of an earlier request with the same key and body; raises 409 if
    the key came with another body or the first request is still running.
    """
    async with maker() as session:
        existing = (
            await session.execute(
                select(IdempotencyKey).where(
                    IdempotencyKey.user_id == user.id,
                    IdempotencyKey.scope == scope,
                    IdempotencyKey.key == key,
                )
            )
        ).scalar_one_or_none()
        if existing is not None and existing.created_at < utcnow() - TTL:
            await session.delete(existing)
            await session.flush()
            existing = None
        if existing is None:
            session.add(IdempotencyKey(user_id=user.id, scope=scope, key=key, request_hash=digest))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise _in_progress() from None
            return None
        if existing.request_hash != digest:
            raise Conflict(
                "This Idempotency-Key was already used with a different request body.",
                code="IDEMPOTENCY_KEY_REUSED",
            )
        if existing.response is None or existing.status_code is None:
            raise _in_progress()
        return Replay(existing.status_code, existing.response)


def _in_progress() -> Conflict:
    return Conflict(
        "A request with this Idempotency-Key is still being processed; retry shortly.",
        code="IDEMPOTENCY_KEY_IN_PROGRESS",
    )


async def finish(
    maker: async_sessionmaker[AsyncSession],
    *,
    user: User,
    scope: str,
    key: str,
    status_code: int,
    body: dict[str, Any],
) -> None:
    async with maker() as session:
        row = (
            await session.execute(
                select(IdempotencyKey).where(
                    IdempotencyKey.user_id == user.id,
                    IdempotencyKey.scope == scope,
                    IdempotencyKey.key == key,
                )
            )
        ).scalar_one()
        row.status_code = status_code
        row.response = body
        await session.commit()


async def release(
    maker: async_sessionmaker[AsyncSession], *, user: User, scope: str, key: str
) -> None:
    """Forget a reservation whose request failed before anything happened (a retry may run)."""
    async with maker() as session:
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user.id,
                IdempotencyKey.scope == scope,
                IdempotencyKey.key == key,
                IdempotencyKey.response.is_(None),
            )
        )
        await session.commit()
