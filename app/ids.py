"""Ids as clients send them."""

from __future__ import annotations

import uuid

from app.errors import NotFound


def parse_id(raw: str | uuid.UUID, what: str) -> uuid.UUID:
    """An id that is not a UUID names nothing: the same 404 as a missing object."""
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError) as exc:
        raise NotFound(f"{what} not found.", code=f"{what.upper()}_NOT_FOUND") from exc
