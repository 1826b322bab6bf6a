"""Keyset page tokens shared by the newest-first listings (call history, webhook deliveries).

A token is the last row's (created_at, id), bound to the project and the filters it was made
with, and signed: opaque to clients, and a token from another project or another filter is
refused instead of silently paging something else.
"""

from __future__ import annotations

import base64
import hmac
import json
import uuid
from datetime import datetime
from typing import Protocol

from app.errors import BadRequest
from app.models import Project


class Fingerprinted(Protocol):
    def fingerprint(self) -> str: ...


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


class PageTokens:
    """Opaque cursors: the last row's (created_at, id), bound to project and filters, signed."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def encode(self, project: Project, f: Fingerprinted, last: Keyed) -> str:
        body = json.dumps(
            {
                "p": str(project.id),
                "f": f.fingerprint(),
                "t": last.created_at.isoformat(),
                "i": str(last.id),
            },
            separators=(",", ":"),
        ).encode()
        return _b64(body) + "." + _b64(self._mac(body))

    def decode(self, token: str, project: Project, f: Fingerprinted) -> tuple[datetime, uuid.UUID]:
        invalid = BadRequest(
            "pageToken is invalid: pass back nextPageToken exactly, with the same projectId "
            "and filters.",
            code="INVALID_PAGE_TOKEN",
        )
        try:
            body_part, mac_part = token.split(".")
            body, mac = _unb64(body_part), _unb64(mac_part)
            if not hmac.compare_digest(mac, self._mac(body)):
                raise invalid
            data = json.loads(body)
            if data["p"] != str(project.id) or data["f"] != f.fingerprint():
                raise invalid
            return datetime.fromisoformat(data["t"]), uuid.UUID(data["i"])
        except (ValueError, KeyError, TypeError) as exc:
            raise invalid from exc

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, "sha256").digest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
