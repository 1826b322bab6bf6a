"""Typed dependencies: the session, the app context, and who is calling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import jwt
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.credentials import Caller, caller_by_api_key_hash, caller_by_id
from app.db import PointReader, point_reader, session_scope
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

_BAD_CREDENTIALS = "Invalid or expired credentials."

# The two ways to authenticate, as the OpenAPI document declares them (app/openapi.py): the
# Authorize dialog of /docs offers both.
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "Access token from /auth/login",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "API key from /user/generate-apikey",
    },
}


async def _caller_from_bearer(ctx: AppContext, reader: PointReader, token: str) -> Caller:
    try:
        claims = ctx.signer.decode_access(token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_TOKEN") from exc
    # The token version is checked on every request: a password change or reset bumps it,
    # and every access token issued before stops working at once, in every process.
    caller = await caller_by_id(reader, claims.user_id)
    if caller is None or caller.token_version != claims.token_version or not caller.verified:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_TOKEN")
    return caller


async def _caller_from_api_key(reader: PointReader, key: str) -> Caller:
    # Looked up in the database on every request (a unique index): a regenerated key stops
    # the old one at once, in every process.
    caller = await caller_by_api_key_hash(reader, sha256_hex(key))
    if caller is None:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_API_KEY")
    return caller


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), or
    None when the header is absent or not of that form."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# current_user reads both headers itself rather than through FastAPI's security classes
# (HTTPBearer, APIKeyHeader): FastAPI solves a dependency's whole tree on every request, even
# when its value is cached, and every route depends on this one, so its tree is kept to the
# request alone. The schemes are declared in the OpenAPI document by app/openapi.py.
async def current_user(request: Request) -> Caller:
    """Bearer token or x-api-key. Every credential presented must be valid (docs/api/index.md).
    One indexed lookup per credential, outside the request's session (Core, read-only)."""
    headers = request.headers
    authorization = headers.get("authorization")
    api_key = headers.get("x-api-key")
    token = bearer_token(authorization)
    # A credential presented is a credential that must be valid: "Authorization: Basic …",
    # a bare "Authorization: xyz" or an empty x-api-key is a 401 even next to a good key.
    if token is None and authorization is not None:
        raise Unauthorized(
            "The Authorization header must be 'Bearer <access token>'.", code="INVALID_TOKEN"
        )
    if api_key is not None and not api_key:
        raise Unauthorized(_BAD_CREDENTIALS, code="INVALID_API_KEY")
    if token is None and api_key is None:
        raise Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <token>' or 'x-api-key'."
        )
    ctx: AppContext = request.app.state.ctx
    reader = point_reader(ctx.engine)
    caller: Caller | None = None
    if token is not None:
        caller = await _caller_from_bearer(ctx, reader, token)
    if api_key:
        key_caller = await _caller_from_api_key(reader, api_key)
        if caller is not None and key_caller.id != caller.id:
            raise Unauthorized("The bearer token and the API key belong to different users.")
        caller = key_caller
    assert caller is not None
    return caller


CurrentCaller = Annotated[Caller, Depends(current_user)]


async def session_user(caller: CurrentCaller, session: SessionDep) -> User:
    """The caller as an ORM object of the request's session, from the row current_user read."""
    return caller.user_in(session)


async def bearer_user(request: Request, user: Annotated[User, Depends(session_user)]) -> User:
    """Bearer token only: an API key cannot mint API keys. current_user, which session_user
    depends on, has checked every credential presented by then."""
    if bearer_token(request.headers.get("authorization")) is None:
        raise Unauthorized("This endpoint takes a Bearer access token; an API key is not enough.")
    return user


CurrentUser = Annotated[User, Depends(session_user)]
BearerUser = Annotated[User, Depends(bearer_user)]
