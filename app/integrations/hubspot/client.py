"""The HubSpot adapter: the only module that imports `hubspot` (the official hubspot-api-client).

The SDK is synchronous (urllib3), so every request runs in a worker thread, never on the event
loop. It is pointed at HUBSPOT_API_BASE_URL, it never retries by itself (the job queue does, and
honours Retry-After), and whatever it raises becomes one of the errors below. The token is only
ever in the SDK's Authorization header: no message here contains it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import anyio
import phonenumbers
import urllib3
from hubspot import HubSpot
from hubspot.crm import contacts as sdk_contacts
from hubspot.crm.objects import calls as sdk_calls

log = logging.getLogger("talkstack.hubspot")

T = TypeVar("T")

# HubSpot's own association type "call to contact" (HUBSPOT_DEFINED).
CALL_TO_CONTACT = 194
# What a contact lookup always asks for, besides the properties a prompt uses.
CONTACT_PROPERTIES = ("phone", "mobilephone", "firstname", "lastname", "email", "company")
# Retry-After beyond this is not waited for in one go: the job's backoff takes over.
MAX_RETRY_AFTER = 3600.0

_SDK_ERRORS = (sdk_contacts.ApiException, sdk_calls.ApiException)


class HubSpotError(Exception):
    """HubSpot did not do what was asked. `status` is its HTTP status (None: no answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        category: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.category = category
        self.retry_after = retry_after


class HubSpotUnauthorized(HubSpotError):
    """401: the token is wrong, expired or revoked."""


class HubSpotRateLimited(HubSpotError):
    """429: wait `retry_after` seconds (None: HubSpot did not say)."""


class HubSpotUnavailable(HubSpotError):
    """5xx, a timeout, or no answer at all: trying again later may work."""


class HubSpotNotFound(HubSpotError):
    """404: no such object (or not in this portal)."""


class HubSpotRejected(HubSpotError):
    """Another 4xx: HubSpot refused the request itself (missing scopes, invalid properties)."""


@dataclass(frozen=True)
class Contact:
    id: str
    properties: dict[str, str | None]
    created_at: datetime | None = None

    def numbers(self) -> list[str]:
        """Its phone numbers in E.164, `phone` first, those that are not valid left out."""
        out: list[str] = []
        for name in ("phone", "mobilephone"):
            e164 = normalise(self.properties.get(name))
            if e164 is not None and e164 not in out:
                out.append(e164)
        return out


def normalise(raw: str | None, region: str | None = None) -> str | None:
    """A phone number as E.164, or None. Without a country code, read in `region` (if any)."""
    if not raw:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class CRM(Protocol):
    """What the app asks of one project's HubSpot account (HubSpotClient)."""

    async def portal_id(self) -> int: ...

    async def get_contact(self, contact_id: str, properties: Collection[str] = ()) -> Contact: ...

    async def find_contact(self, e164: str) -> Contact | None: ...

    async def create_contact(self, properties: Mapping[str, str]) -> Contact: ...

    async def create_call(
        self, properties: Mapping[str, str], *, contact_id: str | None
    ) -> str: ...

    async def update_call(self, call_id: str, properties: Mapping[str, str]) -> None: ...


class HubSpotClient:
    """One project's HubSpot account, reached with its private-app token."""

    def __init__(self, access_token: str, *, base_url: str, timeout: float) -> None:
        # retry=False: a failed request fails at once; the caller decides when to try again.
        self._sdk = HubSpot(access_token=access_token, host=base_url.rstrip("/"), retry=False)
        self._timeout = timeout
        # Each SDK API object owns a urllib3 pool: built once per client, reused by requests.
        self._apis: dict[str, Any] = {}

    def _api(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._apis:
            self._apis[name] = build()
        return self._apis[name]

    @property
    def _contacts(self) -> Any:
        return self._api("contacts", lambda: self._sdk.crm.contacts.basic_api)

    @property
    def _contact_search(self) -> Any:
        return self._api("contact_search", lambda: self._sdk.crm.contacts.search_api)

    @property
    def _calls(self) -> Any:
        return self._api("calls", lambda: self._sdk.crm.objects.calls.basic_api)

    async def portal_id(self) -> int:
        """The account's portal (hub) id; a cheap request that needs a valid token."""

        def ask() -> Any:
            # The SDK has no account-info API: its generic, authenticated request does it.
            return self._contacts.api_client.call_api(
                "/account-info/v3/details",
                "GET",
                response_types_map={200: "object"},
                auth_settings=["oauth2"],
                _return_http_data_only=True,
                _request_timeout=self._timeout,
            )

        details = await self._run("read the account", ask)
        portal = details.get("portalId") if isinstance(details, dict) else None
        if not isinstance(portal, int):
            raise HubSpotUnavailable("HubSpot's account details carry no portalId.")
        return portal

    async def get_contact(self, contact_id: str, properties: Collection[str] = ()) -> Contact:
        wanted = list(dict.fromkeys([*CONTACT_PROPERTIES, *properties]))
        found = await self._run(
            "read the contact",
            lambda: self._contacts.get_by_id(
                contact_id, properties=wanted, _request_timeout=self._timeout
            ),
        )
        return _contact(found)

    async def find_contact(self, e164: str) -> Contact | None:
        """The oldest contact whose phone or mobile phone is this number, or None.

        HubSpot keeps numbers as people typed them: the search asks for the E.164 form and for
        HubSpot's digits-only copies of both fields, and every candidate is checked here.
        """
        parsed = phonenumbers.parse(e164, None)
        national = str(parsed.national_number)
        region = phonenumbers.region_code_for_number(parsed)
        groups = [
            ("phone", e164),
            ("mobilephone", e164),
            ("hs_searchable_calculated_phone_number", national),
            ("hs_searchable_calculated_mobile_number", national),
        ]
        request = sdk_contacts.PublicObjectSearchRequest(
            filter_groups=[
                sdk_contacts.FilterGroup(
                    filters=[sdk_contacts.Filter(property_name=name, operator="EQ", value=value)]
                )
                for name, value in groups
            ],
            properties=list(CONTACT_PROPERTIES),
            limit=20,
        )
        page = await self._run(
            "search contacts",
            lambda: self._contact_search.do_search(request, _request_timeout=self._timeout),
        )
        matches = []
        for result in page.results or []:
            contact = _contact(result)
            stored = [
                normalise(contact.properties.get(name), region) for name in ("phone", "mobilephone")
            ]
            if e164 in stored:
                matches.append(contact)
        if not matches:
            return None
        return min(matches, key=lambda c: (c.created_at is None, c.created_at, _numeric(c.id)))

    async def create_contact(self, properties: Mapping[str, str]) -> Contact:
        body = sdk_contacts.SimplePublicObjectInputForCreate(properties=dict(properties))
        created = await self._run(
            "create the contact",
            lambda: self._contacts.create(body, _request_timeout=self._timeout),
        )
        return _contact(created)

    async def create_call(self, properties: Mapping[str, str], *, contact_id: str | None) -> str:
        """Log a call engagement, associated with the contact; returns its id."""
        associations = []
        if contact_id is not None:
            associations.append(
                sdk_calls.PublicAssociationsForObject(
                    to=sdk_calls.PublicObjectId(id=contact_id),
                    types=[
                        sdk_calls.AssociationSpec(
                            association_category="HUBSPOT_DEFINED",
                            association_type_id=CALL_TO_CONTACT,
                        )
                    ],
                )
            )
        body = sdk_calls.SimplePublicObjectInputForCreate(
            properties=dict(properties), associations=associations
        )
        created = await self._run(
            "log the call", lambda: self._calls.create(body, _request_timeout=self._timeout)
        )
        return str(created.id)

    async def update_call(self, call_id: str, properties: Mapping[str, str]) -> None:
        body = sdk_calls.SimplePublicObjectInput(properties=dict(properties))
        await self._run(
            "update the call",
            lambda: self._calls.update(call_id, body, _request_timeout=self._timeout),
        )

    async def _run(self, what: str, request: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(request)
        except _SDK_ERRORS as exc:
            raise _translate(what, exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise HubSpotUnavailable(
                f"HubSpot did not answer when asked to {what} ({type(exc).__name__})."
            ) from exc
        except ValueError as exc:
            # The SDK checks the answer against its models: one it cannot read is HubSpot's
            # failure (or a changed API), not a reason to answer 500.
            raise HubSpotUnavailable(
                f"HubSpot's answer when asked to {what} could not be read ({exc})."
            ) from exc


def _contact(obj: Any) -> Contact:
    properties = {
        str(k): (None if v is None else str(v)) for k, v in (obj.properties or {}).items()
    }
    created = obj.created_at if isinstance(obj.created_at, datetime) else None
    return Contact(id=str(obj.id), properties=properties, created_at=created)


def _numeric(value: str) -> int:
    return int(value) if value.isdigit() else 0


def _translate(what: str, exc: Any) -> HubSpotError:
    """The SDK's ApiException as one of ours, with HubSpot's own message and category."""
    status = int(exc.status or 0)
    message, category = _error_body(exc.body)
    said = f"{status} {category or ''}".strip() + (f": {message}" if message else "")
    if status == 401:
        return HubSpotUnauthorized(
            f"HubSpot refused the access token when asked to {what} ({said}).",
            status=status,
            category=category,
        )
    if status == 429:
        return HubSpotRateLimited(
            f"HubSpot is rate limiting this account ({said}).",
            status=status,
            category=category,
            retry_after=_retry_after(exc.headers),
        )
    if status == 404:
        return HubSpotNotFound(
            f"HubSpot found nothing when asked to {what} ({said}).",
            status=status,
            category=category,
        )
    if 400 <= status < 500:
        return HubSpotRejected(
            f"HubSpot refused to {what} ({said}).", status=status, category=category
        )
    # 5xx, and status 0: the SDK's wrapping of a TLS failure.
    return HubSpotUnavailable(
        f"HubSpot failed when asked to {what} ({said or exc.reason}).",
        status=status or None,
        category=category,
    )


def _error_body(body: Any) -> tuple[str | None, str | None]:
    """HubSpot's error body: `{"status": "error", "message", "correlationId", "category"}`."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        payload = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    message = payload.get("message")
    category = payload.get("category") or payload.get("errorType")
    return (
        str(message)[:500] if message else None,
        str(category)[:64] if category else None,
    )


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (a number of seconds or an HTTP date), capped; None if absent."""
    value = None
    if headers is not None:
        value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(str(value))
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - datetime.now(when.tzinfo).timestamp()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
