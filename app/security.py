"""Password hashing, JWTs, and the hashes under which secrets are stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import jwt
from passlib.context import CryptContext

from app.config import Settings

JWT_ISSUER = "talkstack"
JWT_AUDIENCE = "talkstack-api"
ACCESS = "access"
# Seconds of clock skew allowed on exp/iat.
JWT_LEEWAY = 5
# Access tokens remembered as verified (see TokenSigner.decode_access); the oldest go first.
VERIFIED_TOKENS_KEPT = 1024


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_api_key() -> str:
    """64 lower-case hex characters, as Talkstack issues them."""
    return secrets.token_hex(32)


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def new_verification_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    token_id: str
    token_version: int


class PasswordHasher:
    """Argon2id through passlib (libpass), always off the event loop and bounded in concurrency."""

    def __init__(self, settings: Settings) -> None:
        self._ctx = CryptContext(
            schemes=["argon2"],
            argon2__type="ID",
            argon2__rounds=settings.argon2_time_cost,
            argon2__memory_cost=settings.argon2_memory_cost_kib,
            argon2__parallelism=settings.argon2_parallelism,
        )
        # Each hash holds argon2_memory_cost_kib of RAM: cap how many run at once.
        self._limiter = anyio.CapacityLimiter(settings.password_hash_concurrency)
        # Verified against when an email is unknown, so login timing does not tell.
        self._dummy_hash = self._ctx.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        result: str = await anyio.to_thread.run_sync(
            self._ctx.hash, password, limiter=self._limiter
        )
        return result

    async def verify(self, password: str, password_hash: str | None) -> bool:
        target = password_hash or self._dummy_hash
        ok: bool = await anyio.to_thread.run_sync(
            self._ctx.verify, password, target, limiter=self._limiter
        )
        return ok and password_hash is not None


class TokenSigner:
    """Access-token JWTs. A `typ` claim keeps other token kinds from passing as access tokens."""

    def __init__(self, secret: str, *, algorithm: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self._ttl = timedelta(seconds=ttl_seconds)
        self._jwt = jwt.PyJWT(options={"enforce_minimum_key_length": True})
        # Access tokens that passed decode_access, by their text: (claims, exp).
        self._verified: dict[str, tuple[AccessClaims, int]] = {}
        # Keys derived from the same secret for other uses stay apart from the JWT key.
        self.code_pepper = self.derive_key(b"verification-code")

    def derive_key(self, label: bytes) -> bytes:
        """A key for one purpose (page tokens, codes...), derived from SECRET_KEY."""
        return hmac.new(self._secret.encode(), label, "sha256").digest()

    def issue_access(self, user_id: uuid.UUID, token_version: int) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        expires = now + self._ttl
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "typ": ACCESS,
            "jti": secrets.token_hex(16),
            "ver": token_version,
            "iat": now,
            "exp": expires,
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
        }
        return self._jwt.encode(claims, self._secret, algorithm=self._algorithm), expires

    def decode_access(self, token: str) -> AccessClaims:
        """Raises jwt.InvalidTokenError for anything but a valid, unexpired access token.

        What a token says cannot change (it is signed), so each one is verified once (PyJWT
        takes ~80 us, as much as a whole light request) and remembered by its exact text;
        later uses check only that it has not expired since. Whether its user still honours it
        (token version, verified email) is for the caller to ask the database, every time.
        """
        known = self._verified.get(token)
        if known is not None:
            access, exp = known
            if exp > time.time() - JWT_LEEWAY:  # as PyJWT decides it
                return access
            del self._verified[token]
            raise jwt.ExpiredSignatureError("Signature has expired")
        claims = self._jwt.decode(
            token,
            self._secret,
            algorithms=[self._algorithm],
            audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "jti", "typ"]},
            leeway=JWT_LEEWAY,
        )
        if claims.get("typ") != ACCESS:
            raise jwt.InvalidTokenError("wrong token type")
        try:
            access = AccessClaims(uuid.UUID(claims["sub"]), str(claims["jti"]), int(claims["ver"]))
            exp = int(claims["exp"])
        except (KeyError, ValueError, TypeError) as exc:
            raise jwt.InvalidTokenError("malformed claims") from exc
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (access, exp)
        return access

    def code_hash(self, email: str, code: str) -> str:
        return hmac.new(self.code_pepper, f"{email}:{code}".encode(), "sha256").hexdigest()


def digests_equal(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a, b)
