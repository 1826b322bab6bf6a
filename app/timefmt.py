from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(dt: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and Z, as Talkstack prints timestamps."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
