"""Project webhooks (CONTRACT.md §8): signed call events, stored first, delivered by a worker."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from typing import Any, Literal, NoReturn

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import utcnow
from app.errors import AppError
from app.jobs.queue import Sessionmaker, enqueue
from app.jobs.ssrf import blocked_reason, guarded_client
from app.jobs.worker import RetryLater
from app.models import Job, Project
from app.project.webhook_url import validate_webhook_url
from app.timefmt import iso_ms

log = logging.getLogger("talkstack.jobs.webhooks")

KIND = "webhook.call_event"
MAX_ATTEMPTS = 5
# Retry n waits RETRY_SCHEDULE[n-1] × WEBHOOK_RETRY_BASE_SECONDS (60 s): 1, 4, 10, 45 minutes,
# five tries over about an hour.
RETRY_SCHEDULE = (1, 4, 10, 45)
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "Talkstack-Webhooks/1"
SIGNATURE_HEADER = "X-Talkstack-Signature"
EVENT_ID_HEADER = "X-Talkstack-Event-Id"

CallEvent = Literal["call.status", "call.analyzed"]


async def enqueue_call_event(
    session: AsyncSession, *, project: Project, event: CallEvent, call: dict[str, Any]
) -> None:
    """Queue `event` for the project's webhook in the caller's transaction; no URL, no event.

    `call` is the call object as the API shows it (JSON-ready). The body is serialised here,
    once: every attempt sends, and signs, exactly these bytes.
    """
    if not project.call_status_webhook:
        return
    await enqueue(
        session,
        kind=KIND,
        payload=call_event_payload(event, call),
        project_id=project.id,
        max_attempts=MAX_ATTEMPTS,
    )


def call_event_payload(event: CallEvent, call: dict[str, Any]) -> dict[str, Any]:
    """The payload of a `webhook.call_event` job: a new event id and the body, serialised."""
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {"id": event_id, "event": event, "call": call, "timestamp": iso_ms(utcnow())},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return {"event_id": event_id, "event": event, "body": body}


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Talkstack-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: str | bytes, tolerance: int = 300, *, now: float | None = None
) -> bool:
    """Whether `header` signs `body` with `secret`, made within `tolerance` seconds of now.

    What a receiver does: recompute the HMAC over the raw body it got and compare in constant
    time; the timestamp bound stops a captured delivery from being replayed later.
    """
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, raw, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def retry_delay(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), ±10 %."""
    step = RETRY_SCHEDULE[min(attempt, len(RETRY_SCHEDULE)) - 1]
    # Jitter: the events queued while a receiver was down do not all come back at once.
    return step * base * random.uniform(0.9, 1.1)  # noqa: S311


class WebhookDelivery:
    """The handler of `webhook.call_event` jobs: one signed POST per attempt."""

    def __init__(self, sessionmaker: Sessionmaker, settings: Settings) -> None:
        self._sessionmaker = sessionmaker
        self._allow_private = settings.webhook_allow_private_hosts
        self._timeout = settings.webhook_timeout_seconds
        self._retry_base = settings.webhook_retry_base_seconds
        self._client = guarded_client(
            allow_private=self._allow_private, timeout=settings.webhook_timeout_seconds
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __call__(self, job: Job) -> None:
        target = await self._target(job)
        if target is None:
            return
        url, secret = target
        body = job.payload["body"].encode()
        # Fresh per attempt: a receiver's tolerance window counts from this send.
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            EVENT_ID_HEADER: job.payload["event_id"],
        }
        # Reasons never include the URL: it may carry the receiver's own token.
        try:
            status = await self._post(url, body, headers)
        except (TimeoutError, httpx.TimeoutException):
            self._retry(job, f"no answer within {self._timeout:g} s")
        except httpx.HTTPError as exc:
            self._retry(job, blocked_reason(exc) or f"connection failed ({type(exc).__name__})")
        if not 200 <= status < 300:
            self._retry(job, f"the receiver answered HTTP {status}")

    async def _target(self, job: Job) -> tuple[str, str] | None:
        """The project's URL and secret as they are now, or None when there is none any more."""
        async with self._sessionmaker() as session:
            project = (
                await session.get(Project, job.project_id) if job.project_id is not None else None
            )
        if project is None or project.is_deleted:
            log.info("event %s dropped: its project is gone", job.payload.get("event_id"))
            return None
        if not project.call_status_webhook or not project.webhook_secret:
            log.info("event %s dropped: the project has no webhook now", job.payload["event_id"])
            return None
        try:
            url = await validate_webhook_url(
                project.call_status_webhook, allow_private=self._allow_private
            )
        except AppError as exc:
            self._retry(job, exc.message)
        return url, project.webhook_secret

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        # The client's timeout bounds each phase; this bounds the whole exchange, so a receiver
        # dribbling its answer cannot hold a worker slot.
        async with (
            asyncio.timeout(self._timeout),
            self._client.stream("POST", url, content=body, headers=headers) as response,
        ):
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received >= MAX_RESPONSE_BYTES:
                    break
            return response.status_code

    def _retry(self, job: Job, reason: str) -> NoReturn:
        raise RetryLater(retry_delay(job.attempts, self._retry_base), reason)
