"""What the app asks of telephony (`Telephony`), and the stand-in used when Twilio is not
configured (`NoTelephony`).

Services call the methods and never ask whether Twilio is configured: the stand-in raises
TelephonyNotConfigured from every method (503, naming the variables to set; errors.py maps
every Twilio failure to the API's errors, in one place). A service that must refuse before it
changes anything calls `ensure_configured()` first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn, Protocol

from app.config import Settings
from app.integrations.twilio.errors import TelephonyNotConfigured
from app.integrations.twilio.types import CallFacts, OwnedNumber, PlacedCall


class Telephony(Protocol):
    """The Twilio calls this server makes (adapter.TwilioAdapter), in our own types."""

    def ensure_configured(self) -> None:
        """Raise TelephonyNotConfigured unless Twilio can be reached."""

    async def find_owned_number(self, e164: str) -> OwnedNumber | None: ...

    async def point_voice_url(self, number_sid: str, url: str, status_callback: str) -> None: ...

    async def clear_voice_url(self, number_sid: str) -> None: ...

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        twiml_url: str,
        status_callback: str,
        recording_status_callback: str,
        amd_callback: str,
        time_limit_seconds: int,
        detect_message_end: bool = False,
    ) -> PlacedCall: ...

    async def fetch_call(self, sid: str) -> CallFacts: ...

    async def list_calls(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        started_after: datetime | None = None,
        limit: int = 50,
    ) -> list[CallFacts]: ...

    async def call_with_twiml(
        self, *, to: str, from_: str, twiml: str, status_callback: str, ring_seconds: int = 30
    ) -> PlacedCall: ...

    async def redirect_call(self, sid: str, twiml: str) -> None: ...

    async def end_call(self, sid: str) -> None: ...

    def valid_signature(
        self, url: str, params: Mapping[str, Any] | str, signature: str | None
    ) -> bool: ...

    async def aclose(self) -> None: ...


class NoTelephony:
    """Twilio is not configured (TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN unset): every request
    to Twilio, and every request from it (its signature cannot be checked), is refused with
    TelephonyNotConfigured."""

    def __repr__(self) -> str:
        return "<NoTelephony>"

    def ensure_configured(self) -> NoReturn:
        raise TelephonyNotConfigured()

    async def find_owned_number(self, e164: str) -> OwnedNumber | None:
        self.ensure_configured()

    async def point_voice_url(self, number_sid: str, url: str, status_callback: str) -> None:
        self.ensure_configured()

    async def clear_voice_url(self, number_sid: str) -> None:
        self.ensure_configured()

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        twiml_url: str,
        status_callback: str,
        recording_status_callback: str,
        amd_callback: str,
        time_limit_seconds: int,
        detect_message_end: bool = False,
    ) -> PlacedCall:
        self.ensure_configured()

    async def fetch_call(self, sid: str) -> CallFacts:
        self.ensure_configured()

    async def list_calls(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        started_after: datetime | None = None,
        limit: int = 50,
    ) -> list[CallFacts]:
        self.ensure_configured()

    async def call_with_twiml(
        self, *, to: str, from_: str, twiml: str, status_callback: str, ring_seconds: int = 30
    ) -> PlacedCall:
        self.ensure_configured()

    async def redirect_call(self, sid: str, twiml: str) -> None:
        self.ensure_configured()

    async def end_call(self, sid: str) -> None:
        self.ensure_configured()

    def valid_signature(
        self, url: str, params: Mapping[str, Any] | str, signature: str | None
    ) -> bool:
        self.ensure_configured()

    async def aclose(self) -> None:
        return None


def build_telephony(settings: Settings) -> Telephony:
    """The Twilio adapter, or the not-configured stand-in when its credentials are not set."""
    if not settings.twilio_configured:
        return NoTelephony()
    # Imported here: the adapter imports the Twilio SDK, which the stand-in never needs.
    from app.integrations.twilio.adapter import TwilioAdapter

    return TwilioAdapter.from_settings(settings)
