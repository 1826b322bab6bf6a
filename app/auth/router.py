"""/auth/*: public account endpoints (rate limited) and change-password."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import HTMLResponse

from app.auth import passwords, service
from app.auth.schemas import (
    ChangePasswordIn,
    EmailIn,
    LoginIn,
    LoginOut,
    RefreshIn,
    RefreshOut,
    ResetPasswordIn,
    SignupIn,
    SignupOut,
    UserOut,
    VerifyEmailIn,
    VerifyEmailOut,
)
from app.context import AppContext
from app.deps import ClientAddress, CtxDep, CurrentUser, SessionDep
from app.integrations.smtp import Mail
from app.schemas import MessageOut, error_responses
from app.timefmt import iso_ms

log = logging.getLogger("talkstack.auth")

public = APIRouter(prefix="/auth", tags=["auth"])
protected = APIRouter(prefix="/auth", tags=["auth"])
pages = APIRouter()

_FORGOT_MESSAGE = "If the email is registered, a reset link has been sent."


@public.post("/signup", response_model=SignupOut, responses=error_responses(429, 502))
async def signup_user(
    body: SignupIn, ctx: CtxDep, session: SessionDep, ip: ClientAddress
) -> SignupOut:
    """Create an unverified account and email it a 6-digit verification code."""
    await ctx.limiter.check("signup", client=ip, email=body.email)
    user, status = await service.signup(
        ctx,
        session,
        email=body.email,
        password=body.password,
        name=body.name,
        company_name=body.company_name,
    )
    if user is None:  # pending signup: the service reveals nothing of it
        return SignupOut(
            message="Email already registered but not verified; a new verification code has "
            "been sent.",
            user=None,
            signupStatus=status,
        )
    return SignupOut(
        message="User registered successfully", user=UserOut.of(user), signupStatus=status
    )


@public.post("/verify-email", response_model=VerifyEmailOut, responses=error_responses(404, 429))
async def verify_email(
    body: VerifyEmailIn, ctx: CtxDep, session: SessionDep, ip: ClientAddress
) -> VerifyEmailOut:
    """Verify the email with the emailed code; returns the first token pair."""
    await ctx.limiter.check("verify-email", client=ip, email=body.email)
    user, tokens = await service.verify_email(ctx, session, email=body.email, code=body.code)
    return VerifyEmailOut(
        message="email verification successful.",
        userData=UserOut.of(user),
        verificationStatus=service.VERIFY_SUCCESS,
        token=tokens.access,
        refreshToken=tokens.refresh,
        expirationTime=iso_ms(tokens.expires_at) or "",
    )


@public.post("/resend-code", response_model=MessageOut, responses=error_responses(404, 429, 502))
async def resend_code(
    body: EmailIn, ctx: CtxDep, session: SessionDep, ip: ClientAddress
) -> MessageOut:
    """Send a new verification code; the previous one stops working."""
    await ctx.limiter.check("resend-code", client=ip, email=body.email)
    await service.resend_code(ctx, session, email=body.email)
    return MessageOut(message="successfully sent verification code to mail")


@public.post("/login", response_model=LoginOut, responses=error_responses(401, 403, 429))
async def login_user(
    body: LoginIn, ctx: CtxDep, session: SessionDep, ip: ClientAddress
) -> LoginOut:
    """Log in with email and password; returns an access token and a refresh token."""
    await ctx.limiter.check("login", client=ip, email=body.email)
    user, tokens = await service.login(ctx, session, email=body.email, password=body.password)
    return LoginOut(
        message="successfully logged in.",
        token=tokens.access,
        refreshToken=tokens.refresh,
        expirationTime=iso_ms(tokens.expires_at) or "",
        user=UserOut.of(user),
        loginStatus=service.LOGIN_SUCCESS,
    )


@public.post("/refresh-token", response_model=RefreshOut, responses=error_responses(401))
async def refresh_token(body: RefreshIn, ctx: CtxDep, session: SessionDep) -> RefreshOut:
    """Trade a refresh token (single use) for a new access and refresh token."""
    tokens = await service.refresh(ctx, session, token=body.refreshToken)
    return RefreshOut(
        message="token refreshed.",
        token=tokens.access,
        refreshToken=tokens.refresh,
        resfreshToken=tokens.refresh,
        expirationTime=iso_ms(tokens.expires_at) or "",
    )


@protected.post("/change-password", response_model=MessageOut, responses=error_responses(401))
async def change_password(
    body: ChangePasswordIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> MessageOut:
    """Change the password; every refresh token and access token of the user stops working."""
    await passwords.change_password(
        ctx, session, user=user, old=body.oldPassword, new=body.newPassword
    )
    return MessageOut(message="successfully updated password.")


async def _deliver(ctx: AppContext, mail: Mail) -> None:
    try:
        await ctx.mailer.send(mail)
    except Exception as exc:  # after the response: nobody to tell but the log
        log.error("password reset email to %s failed: %s", mail.to, type(exc).__name__)


@public.post("/forgot-password", response_model=MessageOut, responses=error_responses(429))
async def forgot_password(
    body: EmailIn, ctx: CtxDep, session: SessionDep, ip: ClientAddress, tasks: BackgroundTasks
) -> MessageOut:
    """Email a password-reset link; the answer is the same whether or not the email is known."""
    await ctx.limiter.check("forgot-password", client=ip, email=body.email)
    mail = await passwords.forgot_password(ctx, session, email=body.email)
    # Sent after the response, so a known email takes no longer to answer than an unknown one.
    if mail is not None:
        tasks.add_task(_deliver, ctx, mail)
    return MessageOut(message=_FORGOT_MESSAGE)


_RESET_PAGE = (Path(__file__).parent / "static" / "reset-password.html").read_text()
_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@pages.get("/reset-password", include_in_schema=False)
async def reset_password_page() -> HTMLResponse:
    """The page the reset email links to: a form that calls POST /auth/reset-password."""
    return HTMLResponse(
        _RESET_PAGE,
        headers={
            "Content-Security-Policy": _PAGE_CSP,
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


@public.post("/reset-password", response_model=MessageOut, responses=error_responses(429))
async def reset_password(
    body: ResetPasswordIn, ctx: CtxDep, session: SessionDep, ip: ClientAddress
) -> MessageOut:
    """Set a new password with the token from the reset email (single use, valid 1 hour)."""
    await ctx.limiter.check("reset-password", client=ip)
    await passwords.reset_password(ctx, session, token=body.token, new=body.newPassword)
    return MessageOut(message="Password has been reset successfully.")
