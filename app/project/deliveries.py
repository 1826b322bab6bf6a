"""A project's webhook deliveries (listed, redelivered) and the rotation of its webhook secret."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.errors import Conflict, NotFound
from app.integrations.webhooks import sender as webhooks
from app.jobs import queue
from app.jobs.queue import Sessionmaker
from app.models import Job, Project, WebhookDelivery
from app.models.webhook_delivery import DeliveryStatus
from app.pagination import PageTokens
from app.project.service import new_webhook_secret

# How long a rotated-out secret keeps signing next to the new one.
PREVIOUS_SECRET_VALIDITY = timedelta(hours=24)


@dataclass(frozen=True)
class DeliveryFilters:
    event: str | None = None
    status: str | None = None

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


async def list_deliveries(
    session: AsyncSession,
    tokens: PageTokens,
    *,
    project: Project,
    filters: DeliveryFilters,
    page_size: int,
    page_token: str | None,
) -> tuple[list[WebhookDelivery], str | None]:
    """The project's deliveries, newest first, one keyset page; and the next page's token."""
    query = select(WebhookDelivery).where(WebhookDelivery.project_id == project.id)
    if filters.event:
        query = query.where(WebhookDelivery.event == filters.event)
    if filters.status:
        query = query.where(WebhookDelivery.status == filters.status)
    if page_token:
        at, last_id = tokens.decode(page_token, project, filters)
        # A row-value comparison: the index scan starts at the cursor (see app/call/history.py).
        after = tuple_(
            literal(at, WebhookDelivery.created_at.type), literal(last_id, WebhookDelivery.id.type)
        )
        query = query.where(tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < after)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    rows = list((await session.scalars(query.limit(page_size + 1))).all())
    more = len(rows) > page_size
    rows = rows[:page_size]
    return rows, tokens.encode(project, filters, rows[-1]) if more and rows else None


def _no_webhook() -> Conflict:
    return Conflict(
        "The project has no webhook URL: set one with POST /project/call-status/add-webhookurl "
        "first.",
        code="WEBHOOK_NOT_SET",
    )


async def redeliver(
    session: AsyncSession, *, project: Project, delivery_id: uuid.UUID
) -> WebhookDelivery:
    """Send a delivery's event again, same id and body, as a new series of attempts.

    A delivery whose job is waiting for its next try is made due now with all its tries
    ahead; a finished (or purged) one gets a new job. 409 while an attempt is being sent.
    """
    # Locked: two redeliveries of one event at once take turns, so only one new job is made.
    delivery = (
        await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.project_id == project.id)
            .with_for_update()
        )
    ).one_or_none()
    if delivery is None:
        raise NotFound("Webhook delivery not found.", code="DELIVERY_NOT_FOUND")
    if not project.call_status_webhook:
        raise _no_webhook()
    busy = Conflict(
        "This delivery is being sent right now; redeliver it once the attempt is over.",
        code="DELIVERY_IN_PROGRESS",
    )
    job = await session.get(Job, delivery.job_id) if delivery.job_id is not None else None
    if job is not None and job.status == queue.JobStatus.RUNNING:
        raise busy
    if job is not None and job.status == queue.JobStatus.QUEUED:
        if not await queue.requeue_now(session, job.id):
            raise busy  # a worker claimed it since it was read
    else:
        row = queue.job_row(
            kind=webhooks.KIND,
            payload={
                "event_id": delivery.event_id,
                "event": delivery.event,
                "body": delivery.body,
                "delivery_id": str(delivery.id),
            },
            project_id=project.id,
            max_attempts=webhooks.MAX_ATTEMPTS,
        )
        await queue.enqueue_many(session, [row])
        delivery.job_id = row["id"]
    now = utcnow()
    delivery.status = webhooks.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.updated_at = now
    await session.flush()
    return delivery


async def rotate_webhook_secret(
    session: AsyncSession, *, project: Project
) -> tuple[str, datetime | None]:
    """A new webhook secret; the one it replaces keeps signing beside it for 24 hours.

    Returns the new secret (shown once) and when the old one stops signing (None if there
    was none). A second rotation within the 24 hours retires the first old secret at once.
    """
    # Locked and re-read: two rotations at once take turns, and neither's secret is lost.
    await session.refresh(project, with_for_update=True)
    if not project.call_status_webhook:
        raise _no_webhook()
    now = utcnow()
    expires = None
    if project.webhook_secret:
        expires = now + PREVIOUS_SECRET_VALIDITY
        project.webhook_secret_previous = project.webhook_secret
        project.webhook_secret_previous_expires_at = expires
    project.webhook_secret = new_webhook_secret()
    project.updated_at = now
    await session.flush()
    return project.webhook_secret, expires


# Deliveries that are over: nothing more will be tried unless the owner redelivers.
SETTLED = (DeliveryStatus.DELIVERED, DeliveryStatus.DEAD)


async def purge_expired(sessionmaker: Sessionmaker, retention: timedelta, batch: int = 1000) -> int:
    """Delete up to `batch` settled deliveries whose event is older than `retention`; how
    many. Their bodies hold transcripts and phone numbers: they are not kept forever. Pending
    and failed ones stay until settled. Run by every job worker, now and then (app/tasks.py)."""
    old = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.created_at < utcnow() - retention,
            WebhookDelivery.status.in_(SETTLED),
        )
        .order_by(WebhookDelivery.created_at)
        .limit(batch)
    )
    async with sessionmaker() as session:
        result = await session.execute(
            delete(WebhookDelivery)
            .where(WebhookDelivery.id.in_(old))
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    return cast(CursorResult[Any], result).rowcount
