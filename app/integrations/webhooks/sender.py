"""Project webhooks (docs/webhooks.md): signed call events, stored first, delivered by a worker."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import httpx
from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import new_id, utcnow
from app.errors import AppError
from app.integrations.webhooks.ssrf import blocked_reason, guarded_client
from app.integrations.webhooks.url import validate_webhook_url
from app.jobs.queue import MAX_ERROR_LENGTH, Sessionmaker, enqueue_many, job_row
from app.jobs.worker import RetryLater
from app.models import Job, Project, WebhookDelivery
from app.models.webhook_delivery import DeliveryStatus
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

CallEvent = Literal["call.status", "call.analyzed", "call.transferred", "call.transfer_failed"]
CALL_EVENTS: tuple[CallEvent, ...] = (
    "call.status",
    "call.analyzed",
    "call.transferred",
    "call.transfer_failed",
)

# A delivery's status, as GET /project/{id}/webhook-deliveries shows it (DeliveryStatus,
# app/models/webhook_delivery.py).
PENDING = DeliveryStatus.PENDING
DELIVERED = DeliveryStatus.DELIVERED
FAILED = DeliveryStatus.FAILED
DEAD = DeliveryStatus.DEAD


async def enqueue_call_event(
    session: AsyncSession, *, project: Project, event: CallEvent, call: dict[str, Any]
) -> None:
    """Queue `event` for the project's webhook in the caller's transaction; no URL, no event.

    `call` is the call object as the API shows it (JSON-ready). The body is serialised here,
    once: every attempt sends, and signs, exactly these bytes.
    """
    if not project.call_status_webhook:
        return
    job, delivery = call_event_rows(project.id, event, call)
    # The Core INSERTs below do not flush: the project (their foreign key) must be written.
    await session.flush()
    await insert_deliveries(session, [delivery])
    await enqueue_many(session, [job])


def call_event_payload(event: CallEvent, call: dict[str, Any]) -> dict[str, Any]:
    """The payload of a `webhook.call_event` job: a new event id and the body, serialised."""
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {"id": event_id, "event": event, "call": call, "timestamp": iso_ms(utcnow())},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return {"event_id": event_id, "event": event, "body": body}


def call_event_rows(
    project_id: uuid.UUID, event: CallEvent, call: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new event as rows: its job (for `enqueue_many`) and its delivery (for
    `insert_deliveries`), to be inserted in one transaction. Plain rows, no ORM objects: the
    status-callback writer makes them by the thousand."""
    payload = call_event_payload(event, call)
    delivery_id = new_id()
    payload["delivery_id"] = str(delivery_id)
    job = job_row(kind=KIND, payload=payload, project_id=project_id, max_attempts=MAX_ATTEMPTS)
    sid = call.get("callSid")
    delivery = {
        "id": delivery_id,
        "project_id": project_id,
        "job_id": job["id"],
        "event_id": payload["event_id"],
        "event": event,
        "call_sid": sid if isinstance(sid, str) else None,
        "body": payload["body"],
        "status": PENDING,
        "attempts": 0,
        "last_status_code": None,
        "last_error": None,
        "next_attempt_at": job["next_attempt_at"],
        "created_at": job["created_at"],
        "updated_at": job["created_at"],
    }
    return job, delivery


_DELIVERIES = cast(Table, WebhookDelivery.__table__)
_INSERT_DELIVERIES = insert(_DELIVERIES)


async def insert_deliveries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Store deliveries made by `call_event_rows`: one INSERT, sent as one executemany."""
    if rows:
        await session.execute(_INSERT_DELIVERIES, rows)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Talkstack-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`."""
    return signature_header([secret], body, timestamp)


def signature_header(secrets: Sequence[str], body: bytes, timestamp: int) -> str:
    """`t=<unix seconds>,v1=<hmac>[,v1=<hmac>]`: one v1 per secret, the current one first.

    Two while a rotated-out secret is still valid (Stripe's convention): a receiver accepts
    the delivery if any v1 matches a secret it knows, so it can switch secrets at its pace.
    """
    signed = f"{timestamp}.".encode() + body
    values = (hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets)
    return f"t={timestamp}," + ",".join(f"v1={v}" for v in values)


def signing_secrets(project: Project, now: datetime) -> list[str]:
    """The secrets that sign the project's deliveries now: the current one, and the one a
    rotation replaced while it is still valid."""
    current = [project.webhook_secret] if project.webhook_secret else []
    previous = project.webhook_secret_previous
    expires = project.webhook_secret_previous_expires_at
    if previous and expires is not None and now < expires:
        return [*current, previous]
    return current


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
    # Every v1 is compared (no early exit): during a rotation one of two values matches.
    matches = [hmac.compare_digest(expected, candidate) for candidate in candidates]
    return any(matches)


def retry_delay(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), ±10 %."""
    step = RETRY_SCHEDULE[min(attempt, len(RETRY_SCHEDULE)) - 1]
    # Jitter: the events queued while a receiver was down do not all come back at once.
    return step * base * random.uniform(0.9, 1.1)  # noqa: S311


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt went, as its delivery records it."""

    status_code: int | None  # what the receiver answered; None: no answer at all
    error: str | None  # why it failed; None: delivered


_RECORD = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id == bindparam("delivery_id"),
        # A redelivery may have started a new series (a new job) since: leave it alone.
        _DELIVERIES.c.job_id == bindparam("series_job_id"),
    )
    .execution_options(synchronize_session=False)
)


class WebhookSender:
    """The handler of `webhook.call_event` jobs: one signed POST per attempt, its outcome
    written on the event's delivery."""

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
        outcome = await self._attempt(job)
        if outcome is None:  # nowhere to send it any more: the job is done, the event dead
            await self._record(job, Outcome(None, "the project has no webhook URL any more"), DEAD)
            return
        if outcome.error is None:
            await self._record(job, outcome, DELIVERED)
            return
        if job.attempts >= job.max_attempts:
            await self._record(job, outcome, DEAD)
            raise RetryLater(None, outcome.error)  # the worker buries it: no tries left
        delay = retry_delay(job.attempts, self._retry_base)
        await self._record(job, outcome, FAILED, utcnow() + timedelta(seconds=delay))
        raise RetryLater(delay, outcome.error)

    async def reaped(self, job: Job) -> None:
        """The worker died during the last attempt, and the job was buried: so is the event."""
        await self._record(job, Outcome(None, job.last_error), DEAD)

    async def _attempt(self, job: Job) -> Outcome | None:
        target = await self._target(job)
        if target is None:
            return None
        if isinstance(target, Outcome):
            return target
        url, secrets = target
        body = job.payload["body"].encode()
        # Fresh per attempt: a receiver's tolerance window counts from this send.
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(secrets, body, int(time.time())),
            EVENT_ID_HEADER: job.payload["event_id"],
        }
        # Reasons never include the URL: it may carry the receiver's own token.
        try:
            status = await self._post(url, body, headers)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, f"no answer within {self._timeout:g} s")
        except httpx.HTTPError as exc:
            reason = blocked_reason(exc) or f"connection failed ({type(exc).__name__})"
            return Outcome(None, reason)
        if not 200 <= status < 300:
            return Outcome(status, f"the receiver answered HTTP {status}")
        return Outcome(status, None)

    async def _target(self, job: Job) -> tuple[str, list[str]] | Outcome | None:
        """The project's URL and signing secrets as they are now; an Outcome when the URL is
        refused; None when there is none any more."""
        async with self._sessionmaker() as session:
            project = (
                await session.get(Project, job.project_id) if job.project_id is not None else None
            )
        if project is None or project.is_deleted:
            log.info("event %s dropped: its project is gone", job.payload.get("event_id"))
            return None
        secrets = signing_secrets(project, utcnow())
        if not project.call_status_webhook or not secrets:
            log.info("event %s dropped: the project has no webhook now", job.payload["event_id"])
            return None
        try:
            url = await validate_webhook_url(
                project.call_status_webhook, allow_private=self._allow_private
            )
        except AppError as exc:
            return Outcome(None, exc.message)
        return url, secrets

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

    async def _record(
        self, job: Job, outcome: Outcome, status: str, next_attempt_at: datetime | None = None
    ) -> None:
        # Jobs queued before deliveries were stored have the delivery the migration made
        # from them, under the job's own id.
        delivery_id = job.payload.get("delivery_id") or str(job.id)
        values = {
            "delivery_id": uuid.UUID(delivery_id),
            "series_job_id": job.id,
            "status": status,
            "attempts": job.attempts,
            "last_status_code": outcome.status_code,
            "last_error": _clip(outcome.error) if outcome.error else None,
            "next_attempt_at": next_attempt_at,
            "updated_at": utcnow(),
        }
        try:
            async with self._sessionmaker() as session:
                await session.execute(_RECORD, values)
                await session.commit()
        except Exception:
            # The attempt itself stands: failing the job over its record would send the event
            # again. The delivery shows this attempt's outcome at the next one.
            log.exception("event %s: recording the attempt failed", job.payload.get("event_id"))


def _clip(error: str) -> str:
    return error if len(error) <= MAX_ERROR_LENGTH else error[: MAX_ERROR_LENGTH - 1] + "…"
