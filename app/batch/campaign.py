"""A batch's campaign settings: when rows may be dialed (`callWindow`) and which call outcomes
are dialed again (`retry`). Both are optional multipart fields holding JSON; both are validated
whole before anything is stored.

The window is in one IANA time zone, the batch's: every row is dialed by that zone's clock (a
row's own number does not move it). `start` < `end` on the same day; a window across midnight
is two windows' worth of rules this server does not take (400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from app.call.status import CallStatus
from app.errors import BadRequest

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
RETRY_OUTCOMES = (
    CallStatus.NO_ANSWER,
    CallStatus.BUSY,
    CallStatus.VOICEMAIL,
    CallStatus.FAILED,
)
MIN_ATTEMPTS, MAX_ATTEMPTS = 1, 10
MIN_DELAY, MAX_DELAY = 60, 7 * 24 * 3600
_END_OF_DAY = 24 * 60


class CampaignError(BadRequest):
    code = "VALIDATION_ERROR"


def _minutes(text: Any, *, end: bool) -> int | None:
    """ "HH:MM" as minutes after midnight; "24:00" only as an end."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        return None
    hours, minutes = text[:2], text[3:]
    if not (hours.isdigit() and minutes.isdigit()):
        return None
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > _END_OF_DAY or (value == _END_OF_DAY and not end):
        return None
    return value


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _zone(name: Any) -> ZoneInfo | None:
    """The IANA zone named, or None. Only names of the zone database: ZoneInfo reads any path
    it is given (a folder such as "America", a name too long for the file system)."""
    if not isinstance(name, str) or name not in _zone_names():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class CallWindow:
    days: frozenset[int]  # weekday() numbers
    start: int  # minutes after local midnight
    end: int
    zone: ZoneInfo

    @classmethod
    def parse(cls, value: Any) -> tuple[CallWindow | None, list[dict[str, str]]]:
        """The window of a decoded `callWindow` field, or the errors in it."""
        errors: list[dict[str, str]] = []

        def bad(field: str, message: str) -> None:
            errors.append(
                {"field": f"callWindow.{field}" if field else "callWindow", "message": message}
            )

        if not isinstance(value, dict):
            bad("", "must be a JSON object with days, start, end and timezone")
            return None, errors
        for key in sorted(set(value) - {"days", "start", "end", "timezone"}):
            bad(key, "is not a callWindow field (days, start, end, timezone)")
        days: set[int] = set()
        raw_days = value.get("days", list(DAYS))
        if not isinstance(raw_days, list) or not raw_days:
            bad("days", f"must be a non-empty list of {', '.join(DAYS)}")
        else:
            for day in raw_days:
                if isinstance(day, str) and day.lower() in DAYS:
                    days.add(DAYS.index(day.lower()))
                else:
                    bad("days", f"{day!r} is not one of {', '.join(DAYS)}")
        start = _minutes(value.get("start"), end=False)
        end = _minutes(value.get("end"), end=True)
        if start is None:
            bad("start", 'must be a local time "HH:MM" (00:00 to 23:59)')
        if end is None:
            bad("end", 'must be a local time "HH:MM" (00:01 to 24:00)')
        if start is not None and end is not None and start >= end:
            bad("end", "must be after start (a window across midnight is not supported)")
        zone = _zone(value.get("timezone"))
        if zone is None:
            bad("timezone", 'must be an IANA time zone name such as "America/New_York"')
        if errors or zone is None or start is None or end is None:
            return None, errors
        return cls(frozenset(days), start, end, zone), []

    @classmethod
    def load(cls, stored: dict[str, Any] | None) -> CallWindow | None:
        """The window stored on a batch (valid: it was checked at upload)."""
        if not stored:
            return None
        window, _ = cls.parse(stored)
        return window

    def public(self) -> dict[str, Any]:
        return {
            "days": [DAYS[d] for d in sorted(self.days)],
            "start": _clock(self.start),
            "end": _clock(self.end),
            "timezone": self.zone.key,
        }

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(self.zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        return local.weekday() in self.days and self.start <= minute < self.end

    def next_open(self, at: datetime) -> datetime:
        """`at` if the window is open then, else when it next opens (UTC)."""
        if self.is_open(at):
            return at
        local_day = at.astimezone(self.zone).date()
        for ahead in range(8):
            day = local_day + timedelta(days=ahead)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(
                day, time(self.start // 60, self.start % 60), tzinfo=self.zone
            ).astimezone(UTC)
            # A start inside a daylight-saving gap lands just after it: still in the window.
            if opens > at:
                return opens
        raise AssertionError("a window with at least one day opens within a week")


@dataclass(frozen=True)
class RetryRule:
    attempts: int  # calls in all, the first one included
    delay_seconds: int


def parse_retry(value: Any) -> tuple[dict[str, RetryRule] | None, list[dict[str, str]]]:
    """The rules of a decoded `retry` field, by outcome, or the errors in it."""
    errors: list[dict[str, str]] = []
    if not isinstance(value, dict):
        message = "must be a JSON object of outcome: {attempts, delaySeconds}"
        return None, [{"field": "retry", "message": message}]
    rules: dict[str, RetryRule] = {}
    for outcome, rule in value.items():
        field = f"retry.{outcome}"
        if outcome not in RETRY_OUTCOMES:
            errors.append(
                {"field": field, "message": f"is not an outcome that can be retried "
                 f"({', '.join(RETRY_OUTCOMES)})"}
            )  # fmt: skip
            continue
        if not isinstance(rule, dict):
            errors.append({"field": field, "message": "must be {attempts, delaySeconds}"})
            continue
        for key in sorted(set(rule) - {"attempts", "delaySeconds"}):
            errors.append({"field": f"{field}.{key}", "message": "is not a retry field"})
        attempts, delay = rule.get("attempts"), rule.get("delaySeconds")
        if not _int_in(attempts, MIN_ATTEMPTS, MAX_ATTEMPTS):
            errors.append(
                {"field": f"{field}.attempts", "message": f"must be an integer from "
                 f"{MIN_ATTEMPTS} to {MAX_ATTEMPTS} (calls in all, the first included)"}
            )  # fmt: skip
        if not _int_in(delay, MIN_DELAY, MAX_DELAY):
            errors.append(
                {"field": f"{field}.delaySeconds", "message": f"must be an integer from "
                 f"{MIN_DELAY} to {MAX_DELAY} (7 days)"}
            )  # fmt: skip
        if isinstance(attempts, int) and isinstance(delay, int):
            rules[outcome] = RetryRule(attempts, delay)
    if errors:
        return None, errors
    return rules, []


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def load_retry(stored: dict[str, Any] | None) -> dict[str, RetryRule]:
    """The rules stored on a batch (valid: they were checked at upload)."""
    rules, _ = parse_retry(stored or {})
    return rules or {}


def retry_public(rules: dict[str, RetryRule]) -> dict[str, dict[str, int]]:
    return {
        outcome: {"attempts": rule.attempts, "delaySeconds": rule.delay_seconds}
        for outcome, rule in rules.items()
    }


def most_attempts(stored: dict[str, Any] | None) -> int:
    """The most calls any outcome allows a row (1: no retries)."""
    return max((rule.attempts for rule in load_retry(stored).values()), default=1)


@dataclass(frozen=True)
class Campaign:
    window: CallWindow | None
    retry: dict[str, RetryRule]


def parse_campaign(call_window: str | None, retry: str | None) -> Campaign:
    """The `callWindow` and `retry` form fields (absent or empty: none); 400 listing every
    problem in either."""
    errors: list[dict[str, str]] = []
    window: CallWindow | None = None
    rules: dict[str, RetryRule] = {}
    for field, text in (("callWindow", call_window), ("retry", retry)):
        if text is None or not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError:
            errors.append({"field": field, "message": "is not valid JSON"})
            continue
        if field == "callWindow":
            window, found = CallWindow.parse(value)
        else:
            parsed, found = parse_retry(value)
            rules = parsed or {}
        errors += found
    if errors:
        summary = "; ".join(f"{e['field']} {e['message']}" for e in errors)
        raise CampaignError(f"Invalid request: {summary}.", errors=errors)
    return Campaign(window, rules)
