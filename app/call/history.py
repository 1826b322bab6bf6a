"""Call history: filters, newest first, keyset pages behind signed opaque tokens."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.call.status import FINAL, TWILIO_STATUSES
from app.errors import BadRequest
from app.models import Call, Project
from app.pagination import PageTokens
from app.phone import to_e164

STATUSES = FINAL | TWILIO_STATUSES


@dataclass(frozen=True)
class Filters:
    to: str | None = None
    from_: str | None = None
    status: str | None = None
    start_time: date | None = None
    start_before: date | None = None
    start_after: date | None = None
    end_time: date | None = None
    end_before: date | None = None
    end_after: date | None = None

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def parse_filters(raw: dict[str, str | None]) -> Filters:
    def day(name: str) -> date | None:
        value = raw.get(name)
        if not value:
            return None
        try:
            return date.fromisoformat(value) if len(value) == 10 else _bad_date(name)
        except ValueError:
            return _bad_date(name)

    def number(name: str) -> str | None:
        value = raw.get(name)
        return to_e164(value, field=name) if value else None

    status = raw.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(
            f"status must be one of {', '.join(sorted(STATUSES))}.",
            code="VALIDATION_ERROR",
            errors=[{"field": "status", "message": "is not a call status"}],
        )
    return Filters(
        to=number("to"),
        from_=number("from"),
        status=status,
        start_time=day("startTime"),
        start_before=day("startTimeBefore"),
        start_after=day("startTimeAfter"),
        end_time=day("endTime"),
        end_before=day("endTimeBefore"),
        end_after=day("endTimeAfter"),
    )


def _bad_date(name: str) -> date:
    raise BadRequest(
        f"{name} must be a date in the form YYYY-MM-DD (UTC).",
        code="VALIDATION_ERROR",
        errors=[{"field": name, "message": "must be a date YYYY-MM-DD"}],
    )


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), tzinfo=UTC)


# How much earlier than created_at a call's ended_at can be: created_at is this server's clock,
# ended_at Twilio's Timestamp (whole seconds, Twilio's clock) or this server's. Generous:
# a bigger margin only means a few more rows read.
_END_SKEW = timedelta(hours=1)


def _conditions(project: Project, f: Filters) -> list[Any]:
    c: list[Any] = [Call.project_id == project.id]
    if f.to:
        c.append(Call.to_number == f.to)
    if f.from_:
        c.append(Call.from_number == f.from_)
    if f.status:
        c.append(Call.status == f.status)
    # "Before D" and "after D" include the whole of day D, as Twilio's StartTime<= / >= do.
    for column, on, before, after in (
        (Call.created_at, f.start_time, f.start_before, f.start_after),
        (Call.ended_at, f.end_time, f.end_before, f.end_after),
    ):
        if on:
            c += [column >= _midnight(on), column < _midnight(on + timedelta(days=1))]
        if before:
            c.append(column < _midnight(before + timedelta(days=1)))
        if after:
            c.append(column >= _midnight(after))
    # A call ends after it starts, so an upper bound on ended_at bounds created_at too (give or
    # take _END_SKEW). Said in SQL, the newest-first scan of the project's calls starts where
    # the answers are, instead of reading and dropping every call that ended later: 250 ms
    # instead of 5 for endTimeBefore=<a year ago> on a million calls.
    end_days = [d for d in (f.end_time, f.end_before) if d]
    if end_days:
        c.append(Call.created_at < _midnight(min(end_days) + timedelta(days=1)) + _END_SKEW)
    return c


async def page(
    session: AsyncSession,
    tokens: PageTokens,
    *,
    project: Project,
    filters: Filters,
    page_size: int,
    page_token: str | None,
) -> tuple[list[Call], str | None]:
    query = select(Call).where(*_conditions(project, filters))
    if page_token:
        at, last_id = tokens.decode(page_token, project, filters)
        # A row-value comparison, not `created_at < at OR (created_at = at AND id < last)`:
        # PostgreSQL and SQLite start the index scan right at the cursor, so a page 10,000 calls
        # deep costs what the first one does; the OR form walks (and filters) every newer call.
        after = tuple_(literal(at, Call.created_at.type), literal(last_id, Call.id.type))
        query = query.where(tuple_(Call.created_at, Call.id) < after)
    rows = list(
        (
            await session.execute(
                query.order_by(Call.created_at.desc(), Call.id.desc()).limit(page_size + 1)
            )
        ).scalars()
    )
    more = len(rows) > page_size
    rows = rows[:page_size]
    return rows, tokens.encode(project, filters, rows[-1]) if more and rows else None
