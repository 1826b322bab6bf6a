"""Typed dependencies: the session, the app context, and who is calling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import session_scope
from app.errors import Unauthorized
from app.models import User
from app.security import sha256_hex


# The dependencies here are `async def` even when they do not await: FastAPI runs a plain
# `def` dependency in its thread pool, a thread round trip on every request.
async def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    # A context manager, not a nested generator: an error raised by the handler is thrown in
    # here and reaches session_scope, which rolls back and closes the connection at once.
    async with session_scope(request.app.state.ctx.sessionmaker) as session:
        yield session


# scope="function": commit before the response is sent, so a client that reads right after
# a write sees it.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def client_address(request: Request) -> str:
    # Behind a proxy, uvicorn's --proxy-headers/--forwarded-allow-ips sets this from
    # X-Forwarded-For for trusted proxies only.
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]

# auto_error=False: we raise our own 401 body, and a request may carry either credential.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearerAuth", description="Access token from /auth/login"
)
api_key_scheme = APIKeyHeader(
    name="x-api-key",
    auto_error=False,
    scheme_name="apiKeyAuth",
    description="API key from /user/generate-apikey",
)

_BAD_CREDENTIALS = "Invalid or expired credentials."


async def _user_from_bearer(ctx: AppContext, session: AsyncSession, token: str) -> User:
    try:
        claims = ctx.signer.decode_access(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_TOKEN") from exc
    user = await session.get(User, claims.user_id)
    if user is None or user.token_version != claims.token_version or not user.verified:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_TOKEN")
    return user


# Built once: every API-key request runs it, and building the expression costs more than the
# indexed lookup itself.
_USER_BY_KEY_HASH = select(User).where(User.api_key_hash == bindparam("key_hash"))


async def _user_from_api_key(session: AsyncSession, key: str) -> User:
    found = await session.execute(_USER_BY_KEY_HASH, {"key_hash": sha256_hex(key)})
    user = found.scalar_one_or_none()
    if user is None:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_API_KEY")
    return user


def _refuse_unusable_headers(
    request: Request, bearer: HTTPAuthorizationCredentials | None, api_key: str | None
) -> None:
    # HTTPBearer/APIKeyHeader read "Authorization: Basic …", "Authorization: xyz" or an empty
    # x-api-key as no credential at all; a credential presented is a credential that must be
    # valid, so a good key next to a garbled Authorization header is still a 401.
    if bearer is None and "authorization" in request.headers:
        raise Unauthorized(
            "The Authorization header must be 'Bearer <access token>'.", code="INVALID_TOKEN"
        )
    if not api_key and "x-api-key" in request.headers:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_API_KEY")


async def current_user(
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> User:
    """Bearer token or x-api-key. Every credential presented must be valid (CONTRACT.md §2)."""
    _refuse_unusable_headers(request, bearer, api_key)
    if bearer is None and not api_key:
        raise Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <token>' or 'x-api-key'."
        )
    user: User | None = None
    if bearer is not None:
        user = await _user_from_bearer(ctx, session, bearer.credentials)
    if api_key:
        key_user = await _user_from_api_key(session, api_key)
        if user is not None and key_user.id != user.id:
            raise Unauthorized("The bearer token and the API key belong to different users.")
        user = key_user
    assert user is not None
    return user


async def bearer_user(
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> User:
    """Bearer token only: an API key cannot mint API keys."""
    _refuse_unusable_headers(request, bearer, api_key)
    if bearer is None:
        raise Unauthorized("This endpoint takes a Bearer access token; an API key is not enough.")
    user = await _user_from_bearer(ctx, session, bearer.credentials)
    if api_key:
        key_user = await _user_from_api_key(session, api_key)
        if key_user.id != user.id:
            raise Unauthorized("The bearer token and the API key belong to different users.")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
BearerUser = Annotated[User, Depends(bearer_user)]
