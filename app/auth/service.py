"""Accounts and credentials: signup, verification, login, token rotation, password changes."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from app.context import AppContext
from app.db import utcnow
from app.errors import AppError, BadRequest, Forbidden, NotFound, Unauthorized
from app.mail import Mail
from app.models import PasswordResetToken, RefreshToken, User
from app.security import digests_equal, new_opaque_token, new_verification_code, sha256_hex

log = logging.getLogger("talkstack.auth")

# Talkstack's status enums (docs §3.3, §3.4, §3.6).
SIGNUP_ACCOUNT_EXISTS, SIGNUP_EMAIL_NOT_VERIFIED, SIGNUP_SUCCESS, SIGNUP_EMAIL_NOT_SENT = 1, 2, 3, 6
VERIFY_INVALID_CODE, VERIFY_SUCCESS, VERIFY_ACCOUNT_EXISTS, VERIFY_NOT_FOUND = 1, 2, 4, 5
LOGIN_NOT_VERIFIED, LOGIN_INVALID_PASSWORD, LOGIN_SUCCESS = 2, 4, 7


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    expires_at: datetime


class EmailNotSent(AppError):
    status_code = 502
    code = "EMAIL_NOT_SENT"
    message = "The email could not be sent; try again later."


async def _user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email))
    return result.scalar_one_or_none()


async def _send(ctx: AppContext, mail: Mail, **extra: Any) -> None:
    try:
        await ctx.mailer.send(mail)
    except Exception as exc:  # any transport failure: roll back, tell the client
        log.warning("email to %s failed: %s", mail.to, type(exc).__name__)
        raise EmailNotSent(**extra) from exc


async def _issue_code(ctx: AppContext, user: User, **extra: Any) -> None:
    code = new_verification_code()
    user.verification_code_hash = ctx.signer.code_hash(user.email, code)
    user.verification_code_expires_at = utcnow() + timedelta(
        seconds=ctx.settings.verification_code_ttl_seconds
    )
    user.verification_failed_attempts = 0
    minutes = ctx.settings.verification_code_ttl_seconds // 60
    await _send(
        ctx,
        Mail(
            to=user.email,
            subject="Your Talkstack verification code",
            body=(
                f"Hello {user.name},\n\nYour verification code is: {code}\n\n"
                f"It is valid for {minutes} minutes. If you did not sign up, ignore this email.\n"
            ),
        ),
        **extra,
    )


async def issue_tokens(
    ctx: AppContext, session: AsyncSession, user: User, *, family_id: uuid.UUID | None = None
) -> TokenPair:
    access, expires = ctx.signer.issue_access(user.id, user.token_version)
    refresh = new_opaque_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=sha256_hex(refresh),
            expires_at=utcnow() + timedelta(seconds=ctx.settings.refresh_token_ttl_seconds),
        )
    )
    await session.flush()
    return TokenPair(access, refresh, expires)


async def signup(
    ctx: AppContext,
    session: AsyncSession,
    *,
    email: str,
    password: str,
    name: str,
    company_name: str | None,
) -> tuple[User, int]:
    existing = await _user_by_email(session, email)
    if existing is not None:
        if existing.verified:
            raise BadRequest(
                "An account with this email already exists.",
                code="ACCOUNT_EXISTS",
                signupStatus=SIGNUP_ACCOUNT_EXISTS,
            )
        # Signed up before but never verified: a fresh code, and nothing else changes
        # (whoever typed this email again cannot take over name or password).
        await _issue_code(ctx, existing, signupStatus=SIGNUP_EMAIL_NOT_SENT)
        return existing, SIGNUP_EMAIL_NOT_VERIFIED
    user = User(
        email=email,
        name=name,
        company_name=company_name,
        password_hash=await ctx.hasher.hash(password),
        verified=False,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent signup with the same email won the race
        raise BadRequest(
            "An account with this email already exists.",
            code="ACCOUNT_EXISTS",
            signupStatus=SIGNUP_ACCOUNT_EXISTS,
        ) from exc
    await _issue_code(ctx, user, signupStatus=SIGNUP_EMAIL_NOT_SENT)
    return user, SIGNUP_SUCCESS


async def verify_email(
    ctx: AppContext, session: AsyncSession, *, email: str, code: str
) -> tuple[User, TokenPair]:
    user = await _user_by_email(session, email)
    if user is None:
        raise NotFound(
            "No signup is waiting for verification with this email.",
            code="ACCOUNT_NOT_FOUND",
            verificationStatus=VERIFY_NOT_FOUND,
        )
    if user.verified:
        raise BadRequest(
            "This email is already verified; log in instead.",
            code="ALREADY_VERIFIED",
            verificationStatus=VERIFY_ACCOUNT_EXISTS,
        )
    used_up = BadRequest(
        "The verification code has expired or was used up; request a new one with "
        "/auth/resend-code.",
        code="CODE_EXPIRED",
        verificationStatus=VERIFY_INVALID_CODE,
    )
    expires = user.verification_code_expires_at
    if user.verification_code_hash is None or expires is None or expires <= utcnow():
        raise used_up
    # Count the try before checking it, in one statement: guesses sent all at once would
    # otherwise all be checked against the code before any of them was counted.
    max_tries = ctx.settings.verification_max_attempts
    tries = (
        await session.execute(
            update(User)
            .where(
                User.id == user.id,
                User.verification_code_hash == user.verification_code_hash,
                User.verification_failed_attempts < max_tries,
            )
            .values(verification_failed_attempts=User.verification_failed_attempts + 1)
            .returning(User.verification_failed_attempts)
            .execution_options(synchronize_session=False)
        )
    ).scalar_one_or_none()
    if tries is None:  # the tries ran out, or a new code replaced this one, meanwhile
        raise used_up
    set_committed_value(user, "verification_failed_attempts", tries)
    if not digests_equal(user.verification_code_hash, ctx.signer.code_hash(user.email, code)):
        left = max_tries - tries
        if left <= 0:
            user.verification_code_hash = None
            user.verification_code_expires_at = None
            message = (
                "Wrong code, and too many wrong tries: request a new code with /auth/resend-code."
            )
        else:
            message = f"Wrong verification code; {left} {'try' if left == 1 else 'tries'} left."
        raise BadRequest(
            message, code="INVALID_CODE", verificationStatus=VERIFY_INVALID_CODE, persist=True
        )
    user.verified = True
    user.verification_code_hash = None
    user.verification_code_expires_at = None
    user.verification_failed_attempts = 0
    user.updated_at = utcnow()
    tokens = await issue_tokens(ctx, session, user)
    return user, tokens


async def resend_code(ctx: AppContext, session: AsyncSession, *, email: str) -> None:
    user = await _user_by_email(session, email)
    if user is None:
        raise NotFound(
            "No signup is waiting for verification with this email.", code="ACCOUNT_NOT_FOUND"
        )
    if user.verified:
        raise BadRequest("This email is already verified.", code="ALREADY_VERIFIED")
    await _issue_code(ctx, user)


async def login(
    ctx: AppContext, session: AsyncSession, *, email: str, password: str
) -> tuple[User, TokenPair]:
    user = await _user_by_email(session, email)
    # Verify even when there is no user (against a dummy hash): same answer, same time.
    ok = await ctx.hasher.verify(password, user.password_hash if user else None)
    if user is None or not ok:
        raise Unauthorized(
            "invalid email or password",
            code="INVALID_CREDENTIALS",
            loginStatus=LOGIN_INVALID_PASSWORD,
        )
    if not user.verified:
        raise Forbidden(
            "Verify your email before logging in; /auth/resend-code sends a new code.",
            code="EMAIL_NOT_VERIFIED",
            loginStatus=LOGIN_NOT_VERIFIED,
        )
    return user, await issue_tokens(ctx, session, user)


async def refresh(ctx: AppContext, session: AsyncSession, *, token: str) -> TokenPair:
    invalid = Unauthorized("Invalid or expired refresh token.", code="INVALID_REFRESH_TOKEN")
    row = (
        await session.execute(
            select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(token))
        )
    ).scalar_one_or_none()
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise invalid
    # Claim the token atomically: of two concurrent refreshes only one can win.
    claimed = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        log.warning("refresh token reuse detected: family %s revoked", row.family_id)
        raise Unauthorized(
            "This refresh token was already used; every session of that login is now "
            "revoked. Log in again.",
            code="REFRESH_TOKEN_REUSED",
            persist=True,
        )
    user = await session.get(User, row.user_id)
    if user is None or not user.verified:
        raise invalid
    return await issue_tokens(ctx, session, user, family_id=row.family_id)


async def _revoke_all_sessions(session: AsyncSession, user: User) -> None:
    user.token_version += 1
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def change_password(
    ctx: AppContext, session: AsyncSession, *, user: User, old: str, new: str
) -> None:
    if not await ctx.hasher.verify(old, user.password_hash):
        raise Unauthorized("The old password is wrong.", code="WRONG_PASSWORD")
    user.password_hash = await ctx.hasher.hash(new)
    user.updated_at = utcnow()
    await _revoke_all_sessions(session, user)


async def forgot_password(ctx: AppContext, session: AsyncSession, *, email: str) -> Mail | None:
    """Create a reset token; return the mail to send (after the response), or None."""
    user = await _user_by_email(session, email)
    if user is None:
        return None
    now = utcnow()
    # A new request voids the older links.
    await session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.user_id == user.id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
    )
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
    now = utcnow()
    row = (
        await session.execute(
            select(PasswordResetToken).where(PasswordResetToken.token_hash == sha256_hex(token))
        )
    ).scalar_one_or_none()
    invalid = BadRequest(
        "The reset link is invalid, expired or already used; request a new one.",
        code="INVALID_RESET_TOKEN",
    )
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise invalid
    claimed = await session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.id == row.id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise invalid
    user = await session.get(User, row.user_id)
    if user is None:
        raise invalid
    user.password_hash = await ctx.hasher.hash(new)
    user.updated_at = now
    await _revoke_all_sessions(session, user)
