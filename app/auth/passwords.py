"""Passwords: change, forgot (a reset link by email) and reset.

Whatever changes a password or its reset links locks the user row first (_lock_user), so such
requests for one user take turns, and a new password ends every session and voids every reset
link mailed before it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.service import user_by_email
from app.context import AppContext
from app.db import utcnow
from app.errors import BadRequest, Unauthorized
from app.integrations.smtp import Mail
from app.models import PasswordResetToken, RefreshToken, User
from app.security import new_opaque_token, sha256_hex


async def _lock_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user, read afresh and locked until the transaction ends.

    Whatever changes a password or its reset links takes this lock before touching them, so
    such requests for one user take turns (a row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite)
    and always lock in the same order, user then links: no deadlock. FOR NO KEY UPDATE, not
    FOR UPDATE: a concurrent login or refresh inserting a token of this user only needs a
    key-share lock on the row and must not wait for us (it would deadlock with the refresh
    tokens we revoke).
    """
    return await session.get(
        User, user_id, with_for_update={"key_share": True}, populate_existing=True
    )


async def _void_reset_links(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> None:
    await session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.user_id == user_id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
    )


async def _set_password(
    session: AsyncSession, user: User, password_hash: str, now: datetime
) -> None:
    """On a user locked with _lock_user: the new password ends every session (refresh tokens,
    and access tokens through token_version) and voids every reset link mailed before, so a
    link read by someone else cannot undo a change or a reset."""
    user.password_hash = password_hash
    user.updated_at = now
    user.token_version += 1
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    await _void_reset_links(session, user.id, now)


async def change_password(
    ctx: AppContext, session: AsyncSession, *, user: User, old: str, new: str
) -> None:
    wrong = Unauthorized("The old password is wrong.", code="WRONG_PASSWORD")
    # The slow hashes run before the lock is taken, so no lock is held through them.
    seen = user.password_hash
    if not await ctx.hasher.verify(old, seen):
        raise wrong
    new_hash = await ctx.hasher.hash(new)
    locked = await _lock_user(session, user.id)
    if locked is None:
        raise wrong
    # Changed meanwhile (a concurrent change or reset): the old password must match the
    # password as it is now.
    if locked.password_hash != seen and not await ctx.hasher.verify(old, locked.password_hash):
        raise wrong
    await _set_password(session, locked, new_hash, utcnow())


async def forgot_password(ctx: AppContext, session: AsyncSession, *, email: str) -> Mail | None:
    """Create a reset token; return the mail to send (after the response), or None."""
    # Locked: concurrent requests take turns, each voiding the links made before it, so at
    # most one link per user is ever live (the newest).
    user = await user_by_email(session, email, lock=True)
    if user is None:
        return None
    now = utcnow()
    await _void_reset_links(session, user.id, now)
    token = new_opaque_token()
    session.add(
        PasswordResetToken(
            user_id=user.id,
            token_hash=sha256_hex(token),
            expires_at=now + timedelta(seconds=ctx.settings.reset_token_ttl_seconds),
        )
    )
    await session.flush()
    link = f"{ctx.settings.public_base_url}/reset-password?token={token}"
    minutes = ctx.settings.reset_token_ttl_seconds // 60
    return Mail(
        to=user.email,
        subject="Reset your Talkstack password",
        body=(
            f"Hello {user.name},\n\nSomeone asked to reset the password of this account. "
            f"To choose a new password, open this link within {minutes} minutes:\n\n{link}\n\n"
            "If it was not you, ignore this email; your password stays as it is.\n"
        ),
    )


async def reset_password(ctx: AppContext, session: AsyncSession, *, token: str, new: str) -> None:
    row = (
        await session.execute(
            select(PasswordResetToken).where(PasswordResetToken.token_hash == sha256_hex(token))
        )
    ).scalar_one_or_none()
    invalid = BadRequest(
        "The reset link is invalid, expired or already used; request a new one.",
        code="INVALID_RESET_TOKEN",
    )
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        raise invalid
    new_hash = await ctx.hasher.hash(new)  # before the lock, as in change_password
    user = await _lock_user(session, row.user_id)
    if user is None:
        raise invalid
    now = utcnow()
    # Claimed under the user's lock: a concurrent reset, change or newer forgot-password may
    # have voided it while we hashed.
    claimed = await session.execute(
        update(PasswordResetToken)
        .where(
            PasswordResetToken.id == row.id,
            PasswordResetToken.used_at.is_(None),
            PasswordResetToken.expires_at > now,
        )
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise invalid
    await _set_password(session, user, new_hash, now)
