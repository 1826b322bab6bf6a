"""Abuse limits for the unauthenticated auth endpoints (`limits`, in memory or on Redis)."""

from __future__ import annotations

import math
import time

import coredis
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.config import Settings
from app.errors import TooManyRequests


class AuthRateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self._storage: Storage
        self._redis_pool: coredis.ConnectionPool | None = None
        if settings.redis_url:
            # Our own pool, so that shutdown can close it: limits' storage has no close.
            self._redis_pool = coredis.ConnectionPool.from_url(settings.redis_url)
            storage = storage_from_string(
                "async+" + settings.redis_url,
                # A documented option of limits' RedisStorage that its type hints leave out.
                connection_pool=self._redis_pool,  # type: ignore[arg-type]
            )
            assert isinstance(storage, Storage)
            self._storage = storage
        else:
            self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._per_ip: RateLimitItem = parse(settings.rate_limit_per_ip)
        self._per_email: RateLimitItem = parse(settings.rate_limit_per_email)

    async def aclose(self) -> None:
        if self._redis_pool is not None:
            self._redis_pool.disconnect()

    async def check(self, flow: str, *, client: str, email: str | None = None) -> None:
        """Count one attempt at `flow`; raise 429 with Retry-After when a limit is spent."""
        if not self.enabled:
            return
        keys: list[tuple[RateLimitItem, str]] = [(self._per_ip, f"ip:{client}")]
        if email:
            keys.append((self._per_email, f"email:{email.lower()}"))
        for item, key in keys:
            if not await self._limiter.hit(item, "auth", flow, key):
                stats = await self._limiter.get_window_stats(item, "auth", flow, key)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise TooManyRequests(
                    f"Too many {flow} attempts; try again in {retry} seconds.",
                    headers={"Retry-After": str(retry)},
                )
