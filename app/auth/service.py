"""Accounts and credentials: signup, verification, login and token rotation (passwords:
app/auth/passwords.py)."""

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
from app.integrations.smtp import Mail
from app.models import RefreshToken, User
from app.security import digests_equal, new_opaque_token, new_verification_code, sha256_hex

log = logging.getLogger("talkstack.auth")

# Talkstack's status enums (its Signup, Verify Email and Login pages; docs/api/auth.md).
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


async def user_by_email(session: AsyncSession, email: str, *, lock: bool = False) -> User | None:
    query = select(User).where(User.email == email)
    if lock:
        query = query.with_for_update(key_share=True)
    result = await session.execute(query)
    return result.scalar_one_or_none()


async def _share_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user, read afresh under a shared lock, before a login or refresh issues tokens.

    It waits for a password change or reset in progress (they hold the lock of
    app/auth/passwords._lock_user) and holds the next one off until the tokens are stored:
    either the change comes after and revokes them, or it came before and is seen here.
    Logins and refreshes do not wait for each other (on SQLite every writer takes turns).
    """
    return await session.get(User, user_id, with_for_update={"read": True}, populate_existing=True)


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
) -> tuple[User | None, int]:
    """The new user and SIGNUP_SUCCESS, or (None, SIGNUP_EMAIL_NOT_VERIFIED) for an email
    that signed up before and is not verified yet."""
    existing = await user_by_email(session, email)
    if existing is not None:
        if existing.verified:
            raise BadRequest(
                "An account with this email already exists.",
                code="ACCOUNT_EXISTS",
                signupStatus=SIGNUP_ACCOUNT_EXISTS,
            )
        # Signed up before, never verified. docs/api/auth.md fixes the answer: a new code, 200,
        # signupStatus 2, name and password unchanged. Anyone may type this email, so they
        # learn that a signup is pending (docs/differences.md: a user who lost the code can
        # finish) and nothing more. No user in the answer: it would be the first signup's
        # name, company, id and dates. Nothing they sent is stored (company neither), so they
        # cannot take the signup over; the new code goes to the mailbox of the email only.
        await _issue_code(ctx, existing, signupStatus=SIGNUP_EMAIL_NOT_SENT)
        return None, SIGNUP_EMAIL_NOT_VERIFIED
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
    user = await user_by_email(session, email)
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
    user = await user_by_email(session, email)
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
    user = await user_by_email(session, email)
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
    # The password may have changed while it was checked: a login with the old one must not
    # outlive the change, so check again against the password as it is under the lock.
    seen = user.password_hash
    current = await _share_user(session, user.id)
    if current is None or (
        current.password_hash != seen
        and not await ctx.hasher.verify(password, current.password_hash)
    ):
        raise Unauthorized(
            "invalid email or password",
            code="INVALID_CREDENTIALS",
            loginStatus=LOGIN_INVALID_PASSWORD,
        )
    return current, await issue_tokens(ctx, session, current)


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
    # The user first, then the token: the order a password change locks them in.
    user = await _share_user(session, row.user_id)
    if user is None or not user.verified:
        raise invalid
    # Claim the token atomically: of two concurrent refreshes only one can win.
    claimed = await session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.id == row.id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        await session.refresh(row)
        if row.used_at is None:  # revoked (a password change) or expired meanwhile
            raise invalid
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
    return await issue_tokens(ctx, session, user, family_id=row.family_id)
