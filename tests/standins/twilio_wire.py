"""Twilio's REST wire format (2010-04-01 API), for the stand-in: SIDs, dates, errors, paging."""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse

API_VERSION = "2010-04-01"
BASIC_REALM = 'Basic realm="Twilio API"'
PAGING_PARAMS = ("Page", "PageSize", "PageToken")

Record = dict[str, Any]
# A resource handler: the request and the path's named groups (e.g. `sid`).
Handler = Callable[[Request, dict[str, str]], Awaitable[JSONResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as Twilio would have received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    auth: tuple[str, str] | None
    headers: dict[str, str]
    # When it arrived (time.monotonic, the same clock in every process of this machine).
    at: float = field(default_factory=time.monotonic)

    def param(self, name: str) -> str | None:
        """The first value of a form field, else of a query parameter."""
        values = self.form.get(name) or self.query.get(name)
        return values[0] if values else None


def new_sid(prefix: str) -> str:
    """A SID shaped like Twilio's: two letters and 32 lower-case hex digits."""
    return prefix + uuid.uuid4().hex


def rfc2822(when: datetime | None = None) -> str:
    """Twilio's date format: `Thu, 30 Jul 2015 23:19:04 +0000`."""
    return format_datetime((when or datetime.now(UTC)).replace(microsecond=0))


def parse_rfc2822(value: str | None) -> datetime | None:
    return parsedate_to_datetime(value) if value else None


def twilio_error(status: int, code: int, message: str, **headers: str) -> JSONResponse:
    """Twilio's error body, as the 2010-04-01 API sends it."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status, headers=headers or None)


def not_found(request: Request) -> JSONResponse:
    return twilio_error(404, 20404, f"The requested resource {request.url.path} was not found")


def basic_auth(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def friendly_name(e164: str) -> str:
    """How Twilio names a number by default: `(415) 555-0100` for NANP numbers."""
    if e164.startswith("+1") and len(e164) == 12:
        return f"({e164[2:5]}) {e164[5:8]}-{e164[8:]}"
    return e164


def phone_filter(raw: str) -> re.Pattern[str]:
    """Twilio's PhoneNumber filter: a partial number, `*` standing for any one digit."""
    return re.compile("".join(r"\d" if ch == "*" else re.escape(ch) for ch in raw))


def valid_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def list_page(
    request: Request,
    key: str,
    records: list[Record],
    default_page_size: int,
    max_page_size: int = 1000,
) -> JSONResponse:
    """One page of a list resource, records under `key`, with Twilio's paging keys."""
    query = request.query_params
    try:
        page_size = min(max(int(query.get("PageSize") or default_page_size), 1), max_page_size)
        page = max(int(query.get("Page") or 0), 0)
    except ValueError:
        return twilio_error(400, 20001, "Invalid paging parameter")
    filters = [(k, v) for k, v in query.multi_items() if k not in PAGING_PARAMS]

    def uri(number: int) -> str:
        extra = [("PageSize", str(page_size)), ("Page", str(number))]
        if number > 0:
            extra.append(("PageToken", "PA" + records[number * page_size - 1]["sid"]))
        return f"{request.url.path}?{urlencode(filters + extra)}"

    start = page * page_size
    chunk = records[start : start + page_size]
    has_next = start + page_size < len(records)
    return JSONResponse(
        {
            key: chunk,
            "end": start + max(len(chunk) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if has_next else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": uri(page),
        }
    )
