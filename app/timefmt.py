from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(dt: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and Z, as Talkstack prints timestamps."""
    if dt is None:
        return None
    # isoformat truncates to the millisecond, as Talkstack does; always ends in "+00:00".
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
