"""What goes wrong with Twilio, in the app's error hierarchy (docs/api/errors.md: 502/503)."""

from __future__ import annotations

import json
from typing import Any

from app.errors import AppError, BadRequest, NotConfigured, UpstreamError


class TwilioUnavailable(UpstreamError):
    """Twilio failed us (credentials, 5xx, timeout, unreachable): nothing the caller can fix."""

    code = "TWILIO_ERROR"
    message = "Twilio could not complete the request; try again later."


class TwilioRejected(BadRequest):
    """Twilio refused the request's content (a 4xx validation error); carries `twilioCode`."""

    code = "TWILIO_REJECTED"
    message = "Twilio rejected the request."


class TelephonyNotConfigured(NotConfigured):
    code = "TWILIO_NOT_CONFIGURED"
    message = "Telephony is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN."


def error_parts(body: str, fallback: str) -> tuple[int | None, str]:
    """Twilio's error code and message from an error body (legacy or RFC-9457 form)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None, fallback
    if not isinstance(payload, dict):
        return None, fallback
    code = payload.get("code")
    message = payload.get("message") or payload.get("detail") or payload.get("title")
    return (code if isinstance(code, int) else None), str(message or fallback)


def twilio_error(status: int, code: int | None, message: str) -> AppError:
    """Twilio's error answer as ours: content it refused is the caller's 400, the rest 502."""
    ref = f"Twilio error {code}" if code else f"HTTP {status}"
    extra: dict[str, Any] = {"twilioCode": code} if code else {}
    if status == 401:
        return TwilioUnavailable(
            f"Twilio rejected the credentials (401 {message}, {ref}): check "
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.",
            **extra,
        )
    if status == 403:
        return TwilioUnavailable(
            f"Twilio refused the request (403 {message}, {ref}): check that the account "
            "behind TWILIO_ACCOUNT_SID may do this.",
            **extra,
        )
    if status == 404:
        return TwilioUnavailable(
            f"Twilio could not find the resource (404 {message}, {ref}).", **extra
        )
    if status == 429:
        return TwilioUnavailable(
            f"Twilio is rate limiting this account (429 {message}); try again later.", **extra
        )
    if 400 <= status < 500:
        # Invalid or unreachable To (21211, 21214-21217), unverified From (21210), geo
        # permissions (21215, 13224...): the request's content, which the caller can change.
        return TwilioRejected(f"Twilio rejected the request: {message} ({ref}).", **extra)
    return TwilioUnavailable(
        f"Twilio failed to answer ({status} {message}, {ref}); try again later.", **extra
    )
