"""What goes wrong with Twilio, in the app's error hierarchy (CONTRACT.md §3: 502/503)."""

from __future__ import annotations

from app.errors import BadRequest, NotConfigured, UpstreamError


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
