"""The Twilio adapter: with twiml.py, the only modules that import `twilio`.

The official SDK does the talking; this module gives it an httpx transport that honours
TWILIO_API_BASE_URL (so Twilio-compatible carriers and the test stand-in work), and turns what it
returns into our own types and errors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from app.config import Settings
from app.errors import AppError
from app.integrations.twilio.errors import TwilioUnavailable, error_parts, twilio_error
from app.integrations.twilio.types import (
    STATUS_CALLBACK_EVENTS,
    CallFacts,
    OwnedNumber,
    PlacedCall,
    positive_price,
    whole_seconds,
)

__all__ = [
    "CallFacts",
    "HttpxTwilioClient",
    "OwnedNumber",
    "PlacedCall",
    "TwilioAdapter",
    "valid_twilio_signature",
]

log = logging.getLogger("talkstack.twilio")

TWILIO_API_BASE_URL = "https://api.twilio.com"
# api.twilio.com, and the edge/region forms the SDK builds from TWILIO_EDGE / TWILIO_REGION.
_API_HOST = re.compile(r"api(\.[a-z0-9-]+){0,2}\.twilio\.com")
_SDK_PREFIX = re.compile(r"^Unable to [a-z]+ (record|page): ", re.IGNORECASE)


class HttpxTwilioClient(AsyncHttpClient):  # type: ignore[misc]
    """The SDK's HTTP layer on one shared httpx.AsyncClient, sending to the configured base URL.

    Replaces the SDK's aiohttp client, which warns about unclosed sessions and has no base-URL
    option (docs/dependencies.md).
    """

    def __init__(
        self,
        *,
        base_url: str = TWILIO_API_BASE_URL,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(logger=log, is_async=True, timeout=timeout)
        base = base_url.rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"TWILIO_API_BASE_URL must be an http(s) URL, not {base_url!r}")
        self._base = None if base == TWILIO_API_BASE_URL else parts
        self._timeout = timeout
        # trust_env=False: no proxy or .netrc from the environment may see the credentials.
        self._http = httpx.AsyncClient(
            timeout=timeout, trust_env=False, follow_redirects=False, transport=transport
        )

    @property
    def timeout_seconds(self) -> float:
        return self._timeout

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def rewrite_url(self, url: str) -> str:
        """The URL the SDK built for api.twilio.com, moved onto TWILIO_API_BASE_URL."""
        if self._base is None:
            return url
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if _API_HOST.fullmatch(host):
            path = self._base.path.rstrip("/") + parts.path
            return urlunsplit((self._base.scheme, self._base.netloc, path, parts.query, ""))
        if host == "twilio.com" or host.endswith(".twilio.com"):
            # Another Twilio product (Lookups, Verify...): the compatible API does not serve it,
            # and real Twilio must not receive the carrier's credentials.
            raise TwilioUnavailable(
                f"TWILIO_API_BASE_URL points at a Twilio-compatible API, which does not serve "
                f"{host}."
            )
        return url

    async def request(
        self,
        method: str,
        uri: str,
        params: Mapping[str, object] | None = None,
        data: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the SDK's interface)
        allow_redirects: bool = False,
    ) -> Response:
        target = httpx.URL(self.rewrite_url(uri))
        if params:
            # Merged by hand: httpx's `params=` replaces the query, and next_page_uri has one.
            target = target.copy_merge_params(tuple(_pairs(params)))
        send_headers = dict(headers or {})
        content: bytes | None = None
        if data:
            content = urlencode(_pairs(data)).encode()
            send_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        response = await self._http.request(
            method.upper(),
            target,
            content=content,
            headers=send_headers,
            auth=httpx.BasicAuth(*auth) if auth else None,
            timeout=timeout if timeout is not None else self._timeout,
            follow_redirects=allow_redirects,
        )
        log.debug("twilio %s %s -> %d", method.upper(), target.path, response.status_code)
        return Response(response.status_code, response.text, dict(response.headers))

    async def close(self) -> None:
        await self._http.aclose()


def _pairs(values: Mapping[str, object]) -> list[tuple[str, str]]:
    """Form or query pairs the way Twilio reads them: a list is the same key repeated."""
    out: list[tuple[str, str]] = []
    for key, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is None:
                continue
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            out.append((key, text))
    return out


@contextmanager
def _twilio_errors(timeout: float) -> Iterator[None]:
    """Every way the SDK or the network can fail, as one of our errors."""
    try:
        yield
    except AppError:
        raise
    except TwilioRestException as exc:
        message = _SDK_PREFIX.sub("", str(exc.msg or "")) or "no message"
        raise twilio_error(int(exc.status), exc.code, message) from exc
    except TwilioServiceException as exc:
        message = str(exc.detail or exc.title or "no message")
        raise twilio_error(int(exc.status), exc.code, message) from exc
    except TwilioException as exc:
        # A list page that is not 200 arrives as TwilioException("Unable to fetch page", response).
        response = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(response, Response):
            status = int(response.status_code)
            code, message = error_parts(response.text, "no message")
            raise twilio_error(status, code, message) from exc
        detail = exc.args[0] if exc.args else type(exc).__name__
        raise TwilioUnavailable(f"Twilio answered in an unexpected way: {detail}.") from exc
    except httpx.TimeoutException as exc:
        raise TwilioUnavailable(
            f"Twilio did not answer in time ({timeout:g} s); try again later."
        ) from exc
    except httpx.HTTPError as exc:
        raise TwilioUnavailable(
            f"Twilio could not be reached ({type(exc).__name__}); try again later."
        ) from exc
    except ValueError as exc:
        # A 200 whose body is not Twilio's JSON: a wrong TWILIO_API_BASE_URL, usually.
        raise TwilioUnavailable(
            "Twilio answered with something that is not its API; check TWILIO_API_BASE_URL."
        ) from exc


class TwilioAdapter:
    """The Twilio calls this server makes, in our own types. Built once, in the lifespan."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_base_url: str = TWILIO_API_BASE_URL,
        timeout_seconds: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.account_sid = account_sid
        self._auth_token = auth_token
        self._http = HttpxTwilioClient(
            base_url=api_base_url, timeout=timeout_seconds, transport=transport
        )
        self._client = Client(account_sid, auth_token, http_client=self._http)

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioAdapter:
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required")
        return cls(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            api_base_url=settings.twilio_api_base_url,
            timeout_seconds=settings.twilio_timeout_seconds,
        )

    def __repr__(self) -> str:
        return f"<TwilioAdapter {self.account_sid}>"

    @property
    def closed(self) -> bool:
        return self._http.closed

    def ensure_configured(self) -> None:
        """Configured: nothing to refuse (port.NoTelephony refuses)."""

    @contextmanager
    def _errors(self) -> Iterator[None]:
        with _twilio_errors(self._http.timeout_seconds):
            yield

    async def find_owned_number(self, e164: str) -> OwnedNumber | None:
        """The account's incoming number, else its verified caller id, for exactly `e164`."""
        with self._errors():
            # PhoneNumber filters by partial match: +14155550100 also lists +141555501001.
            for rec in await self._client.incoming_phone_numbers.list_async(phone_number=e164):
                if rec.phone_number == e164:
                    caps = rec.capabilities if isinstance(rec.capabilities, dict) else {}
                    return OwnedNumber(
                        e164=e164,
                        kind="incoming",
                        sid=str(rec.sid),
                        voice_capable=bool(caps.get("voice", True)),
                    )
            for rec in await self._client.outgoing_caller_ids.list_async(phone_number=e164):
                if rec.phone_number == e164:
                    return OwnedNumber(e164=e164, kind="caller_id", sid=str(rec.sid))
        return None

    async def point_voice_url(self, number_sid: str, url: str, status_callback: str) -> None:
        """Send the incoming number's calls to `url` and their final status to
        `status_callback` (both POST, signed)."""
        with self._errors():
            await self._client.incoming_phone_numbers(number_sid).update_async(
                voice_url=url,
                voice_method="POST",
                status_callback=status_callback,
                status_callback_method="POST",
            )

    async def clear_voice_url(self, number_sid: str) -> None:
        """Stop sending the incoming number's calls and statuses anywhere (it was released)."""
        with self._errors():
            await self._client.incoming_phone_numbers(number_sid).update_async(
                voice_url="", status_callback=""
            )

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
        """Dial `to` from `from_`; Twilio fetches TwiML from `twiml_url` when it connects.

        Every progress event, the finished recording and the async AMD verdict come back to
        the given callback URLs (POST, signed). `detect_message_end`: an answering machine's
        verdict waits for the end of its greeting (the beep), to leave a message after it.
        """
        with self._errors():
            call = await self._client.calls.create_async(
                to=to,
                from_=from_,
                url=twiml_url,
                method="POST",
                status_callback=status_callback,
                status_callback_method="POST",
                status_callback_event=list(STATUS_CALLBACK_EVENTS),
                record=True,
                recording_status_callback=recording_status_callback,
                recording_status_callback_method="POST",
                recording_status_callback_event=["completed"],
                # Async: the callee hears the agent at once instead of AMD's silence.
                machine_detection="DetectMessageEnd" if detect_message_end else "Enable",
                async_amd="true",
                async_amd_status_callback=amd_callback,
                async_amd_status_callback_method="POST",
                time_limit=time_limit_seconds,
            )
        return PlacedCall(sid=str(call.sid), status=str(call.status or "queued"))

    async def fetch_call(self, sid: str) -> CallFacts:
        with self._errors():
            return _call_facts(await self._client.calls(sid).fetch_async())

    async def list_calls(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        started_after: datetime | None = None,
        limit: int = 50,
    ) -> list[CallFacts]:
        """The account's calls, newest first, that started at or after `started_after`."""
        filters: dict[str, Any] = {}
        if to is not None:
            filters["to"] = to
        if from_ is not None:
            filters["from_"] = from_
        if started_after is not None:
            # The SDK formats the datetime as-is with a "Z", so it must be UTC (naive: taken
            # as UTC).
            if started_after.tzinfo is None:
                started_after = started_after.replace(tzinfo=UTC)
            started_after = started_after.astimezone(UTC)
            filters["start_time_after"] = started_after
        found: list[CallFacts] = []
        if limit <= 0:
            return found
        with self._errors():
            records = await self._client.calls.stream_async(page_size=min(limit, 1000), **filters)
            async for rec in records:
                facts = _call_facts(rec)
                # Twilio documents StartTime> as a date: the time of day is checked here.
                if started_after is not None and (
                    facts.start_time is None or facts.start_time < started_after
                ):
                    continue
                found.append(facts)
                if len(found) >= limit:
                    break
        return found

    async def call_with_twiml(
        self, *, to: str, from_: str, twiml: str, status_callback: str, ring_seconds: int = 30
    ) -> PlacedCall:
        """Dial `to` and run `twiml` when answered (the human leg of a warm transfer): no
        recording or machine detection of its own; its progress comes to `status_callback`."""
        with self._errors():
            call = await self._client.calls.create_async(
                to=to,
                from_=from_,
                twiml=twiml,
                status_callback=status_callback,
                status_callback_method="POST",
                status_callback_event=list(STATUS_CALLBACK_EVENTS),
                timeout=ring_seconds,
            )
        return PlacedCall(sid=str(call.sid), status=str(call.status or "queued"))

    async def redirect_call(self, sid: str, twiml: str) -> None:
        """Replace what a live call is doing with `twiml` (its relay session ends)."""
        with self._errors():
            await self._client.calls(sid).update_async(twiml=twiml)

    async def end_call(self, sid: str) -> None:
        """Hang up: an answered call completes, a queued or ringing one is canceled."""
        with self._errors():
            await self._client.calls(sid).update_async(status="completed")

    def valid_signature(
        self, url: str, params: Mapping[str, Any] | str, signature: str | None
    ) -> bool:
        return valid_twilio_signature(self._auth_token, url, params, signature)

    async def aclose(self) -> None:
        await self._http.close()


def _call_facts(rec: Any) -> CallFacts:
    """The SDK's CallInstance in our terms (its From is `_from`: `from` is a keyword)."""
    return CallFacts(
        sid=str(rec.sid),
        status=str(rec.status or ""),
        duration_seconds=whole_seconds(rec.duration),
        price=positive_price(rec.price),
        price_unit=rec.price_unit or None,
        answered_by=rec.answered_by or None,
        start_time=rec.start_time if isinstance(rec.start_time, datetime) else None,
        end_time=rec.end_time if isinstance(rec.end_time, datetime) else None,
        to=str(rec.to or ""),
        from_=str(rec._from or ""),
        date_created=rec.date_created if isinstance(rec.date_created, datetime) else None,
    )


def valid_twilio_signature(
    auth_token: str, url: str, params: Mapping[str, Any] | str, signature: str | None = ""
) -> bool:
    """Whether `signature` (X-Twilio-Signature) is Twilio's for this exact URL and form.

    `url` must be the public URL Twilio called (scheme included); `params` the form fields
    (a Starlette FormData works: repeated fields count), or the raw body for JSON webhooks.
    """
    # The SDK raises TypeError on None; a missing header is simply not valid.
    return bool(RequestValidator(auth_token).validate(url, params, signature or ""))
