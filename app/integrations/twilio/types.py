"""What the Twilio adapter hands back: plain frozen values, free of the SDK's types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Literal

# Twilio posts to StatusCallback for these; without the list it sends `completed` only.
STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")


@dataclass(frozen=True)
class OwnedNumber:
    """A number the Twilio account may call from: one of its own, or a verified caller id."""

    e164: str
    kind: Literal["incoming", "caller_id"]
    sid: str
    # Purchased numbers say whether they can carry voice; verified caller ids always can.
    voice_capable: bool = True


@dataclass(frozen=True)
class PlacedCall:
    """A call Twilio accepted: its Call SID and first status (`queued`, usually)."""

    sid: str
    status: str


@dataclass(frozen=True)
class CallFacts:
    """Twilio's Call resource, as far as this server cares."""

    sid: str
    status: str
    duration_seconds: int | None
    # Positive (Twilio reports what it charged as a negative number); None until priced.
    price: Decimal | None
    price_unit: str | None
    answered_by: str | None
    start_time: datetime | None
    end_time: datetime | None
    to: str
    from_: str
    date_created: datetime | None = None


def positive_price(raw: object) -> Decimal | None:
    """Twilio's `price` ("-0.01300", or a number from compatible APIs) as a positive Decimal.

    None while Twilio has not priced the call yet (it can take minutes after the end).
    """
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    return abs(value) if value.is_finite() else None


def whole_seconds(raw: object) -> int | None:
    """Twilio's `duration` (a string of seconds; empty for unanswered or ongoing calls)."""
    if raw is None or raw == "":
        return None
    try:
        return int(str(raw))
    except ValueError:
        return None
