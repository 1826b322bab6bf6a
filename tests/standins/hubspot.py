"""A HubSpot stand-in: a real HTTP server on 127.0.0.1 that speaks HubSpot's CRM v3 API.

The app reaches it through HUBSPOT_API_BASE_URL with the official `hubspot-api-client`, so the
SDK does the real work: Bearer auth, JSON bodies, its models, HubSpot's error bodies
(`{"status": "error", "message", "correlationId", "category"}`). What it serves: contact search
(filterGroups ORed, filters ANDed; HubSpot's digits-only `hs_searchable_calculated_*` copies of
the phone fields), contact create and read, call engagements (create with associations, update),
and the account details. Every request is recorded, and faults can be scripted (401, 429 with
Retry-After, 5xx, hangs), for every request or only those to one path.

Use the `hubspot` fixture (one server per session, state reset for each test):

    async def test_x(hubspot, settings_overrides):
        settings_overrides.update(hubspot.settings_overrides())
        contact = hubspot.add_contact(phone="+14155550123", firstname="John")
        hubspot.fail_next(status=429, retry_after=2, path="/crm/v3/objects/calls")
        ...
        [engagement] = hubspot.calls()

No test reaches the real HubSpot: for the whole session HUBSPOT_API_BASE_URL (the
environment variable, which Settings reads) points at this stand-in.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.standins.server import LocalServer, reset_around, running

TOKEN = "pat-na1-standin-0000-1111-2222-333333333333"
PORTAL_ID = 62515
CALL_TO_CONTACT = 194

Record = dict[str, Any]

# The properties the stand-in knows (HubSpot refuses others on create and update).
CONTACT_PROPERTIES = frozenset(
    {
        "phone", "mobilephone", "firstname", "lastname", "email", "company", "city", "country",
        "jobtitle", "lifecyclestage", "hs_lead_status", "notes",
    }
)  # fmt: skip
CALL_PROPERTIES = frozenset(
    {
        "hs_timestamp", "hs_call_title", "hs_call_body", "hs_call_direction", "hs_call_status",
        "hs_call_duration", "hs_call_from_number", "hs_call_to_number", "hs_call_recording_url",
        "hs_call_disposition", "hubspot_owner_id", "hs_call_callee_object_id",
        "hs_call_callee_object_type",
    }
)  # fmt: skip
CALL_STATUSES = frozenset(
    {
        "BUSY", "CALLING_CRM_USER", "CANCELED", "COMPLETED", "CONNECTING", "FAILED",
        "IN_PROGRESS", "MISSED", "NO_ANSWER", "QUEUED", "RINGING",
    }
)  # fmt: skip
# Returned by a search or a read when no `properties` are asked for.
DEFAULT_CONTACT_PROPERTIES = (
    "createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname",
)  # fmt: skip
# HubSpot's limits on one search request.
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
MAX_FILTERS = 18
MAX_SEARCH_LIMIT = 200


def _now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def hubspot_error(status: int, message: str, category: str) -> JSONResponse:
    """HubSpot's error body."""
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return JSONResponse(body, status_code=status)


def _unauthorized() -> JSONResponse:
    return hubspot_error(
        401,
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and "
        "you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        "INVALID_AUTHENTICATION",
    )


def _not_found(what: str = "resource") -> JSONResponse:
    return hubspot_error(404, f"{what} not found", "OBJECT_NOT_FOUND")


def _invalid(message: str) -> JSONResponse:
    return hubspot_error(400, message, "VALIDATION_ERROR")


def searchable_digits(raw: str | None) -> str | None:
    """HubSpot's `hs_searchable_calculated_*` copy of a phone field: the national number's
    digits, whatever format it was typed in (read as a US number when it has no '+')."""
    if not raw:
        return None
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        digits = re.sub(r"\D", "", raw)
        return digits or None
    return str(number.national_number)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]  # lower-case names


@dataclass
class _Fault:
    status: int | None  # None: hang
    seconds: float = 0.0
    retry_after: float | None = None
    path: str | None = None  # only requests whose path contains this


@dataclass
class _State:
    contacts: dict[str, Record] = field(default_factory=dict)
    calls: dict[str, Record] = field(default_factory=dict)
    # (call id, contact id, association type id)
    associations: list[tuple[str, str, int]] = field(default_factory=list)


class HubSpotStandin:
    def __init__(self) -> None:
        self.tokens = {TOKEN}
        self.portal_id = PORTAL_ID
        # HubSpot's search index lags behind writes: objects younger than this are not found.
        self.search_lag_seconds = 0.0
        self.requests: list[RecordedRequest] = []
        self.state = _State()
        self._ids = itertools.count(101)
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._routes = [
            ("GET", re.compile(r"/account-info/v3/details"), self._account),
            ("POST", re.compile(r"/crm/v3/objects/contacts/search"), self._search_contacts),
            ("POST", re.compile(r"/crm/v3/objects/contacts"), self._create_contact),
            ("GET", re.compile(r"/crm/v3/objects/contacts/(?P<id>[^/]+)"), self._get_contact),
            ("POST", re.compile(r"/crm/v3/objects/calls"), self._create_call),
            ("GET", re.compile(r"/crm/v3/objects/calls/(?P<id>[^/]+)"), self._get_call),
            ("PATCH", re.compile(r"/crm/v3/objects/calls/(?P<id>[^/]+)"), self._update_call),
        ]
        app = Starlette(
            routes=[
                Route("/{path:path}", self._dispatch, methods=["GET", "POST", "PATCH", "DELETE"])
            ]
        )
        self._server = LocalServer(app, name="hubspot-standin")

    # -- seeding and reading ---------------------------------------------------------------

    def add_contact(self, **properties: str | None) -> str:
        """A contact as if made in HubSpot's UI (any phone format); returns its id."""
        with self._lock:
            record = self._new_object(self.state.contacts, properties)
            record["created"] = 0.0  # long indexed
        return str(record["id"])

    def contacts(self) -> list[Record]:
        with self._lock:
            return [dict(c) for c in self.state.contacts.values()]

    def calls(self) -> list[Record]:
        with self._lock:
            return [dict(c) for c in self.state.calls.values()]

    def associations_of(self, call_id: str) -> list[tuple[str, int]]:
        with self._lock:
            return [(c, t) for call, c, t in self.state.associations if call == call_id]

    def delete_call(self, call_id: str) -> None:
        """The engagement is deleted in HubSpot (by a user)."""
        with self._lock:
            del self.state.calls[call_id]

    def revoke(self, token: str = TOKEN) -> None:
        with self._lock:
            self.tokens.discard(token)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path == path and (method is None or r.method == method)
            ]

    # -- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: float | None = None,
        path: str | None = None,
    ) -> None:
        """The next `count` requests (to `path`, if given) answer `status` with HubSpot's body."""
        with self._lock:
            self._faults.extend(
                _Fault(status, retry_after=retry_after, path=path) for _ in range(count)
            )

    def hang_next(self, count: int = 1, *, seconds: float = 30.0, path: str | None = None) -> None:
        """The next `count` requests wait `seconds` (or until reset) before being answered."""
        with self._lock:
            self._faults.extend(_Fault(None, seconds=seconds, path=path) for _ in range(count))

    # -- configuration ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def settings_overrides(self) -> dict[str, Any]:
        return {"hubspot_api_base_url": self.base_url, "hubspot_timeout_seconds": 2.0}

    def reset(self) -> None:
        with self._lock:
            self._release.set()
            self._release = threading.Event()
            self.tokens = {TOKEN}
            self.portal_id = PORTAL_ID
            self.search_lag_seconds = 0.0
            self.requests = []
            self.state = _State()
            self._ids = itertools.count(101)
            self._faults.clear()

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._release.set()
        self._server.stop()

    # -- the server ------------------------------------------------------------------------

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.path is None or fault.path in path:
                self._faults.remove(fault)
                return fault
        return None

    async def _dispatch(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return _invalid("Invalid input JSON on line 1")
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query={k: request.query_params.getlist(k) for k in request.query_params},
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        with self._lock:
            self.requests.append(recorded)
            fault = self._take_fault(request.url.path)
            release = self._release
            tokens = set(self.tokens)
        if fault is not None and fault.status is None:
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline:
                if release.is_set():  # the test is over
                    break
                await asyncio.sleep(0.02)
        elif fault is not None:
            return self._fault_answer(fault)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token not in tokens:
            return _unauthorized()
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.url.path)
            if match is None:
                continue
            allowed = True
            if method == request.method:
                with self._lock:
                    return handler(request, body, match.groupdict())
        if allowed:
            return hubspot_error(405, "Method Not Allowed", "METHOD_NOT_ALLOWED")
        return _not_found()

    @staticmethod
    def _fault_answer(fault: _Fault) -> JSONResponse:
        if fault.status == 401:
            return _unauthorized()
        if fault.status == 429:
            # HubSpot's 429 names the limit (errorType, policyName) instead of a category.
            body = {
                "status": "error",
                "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": str(uuid.uuid4()),
                "policyName": "TEN_SECONDLY_ROLLING",
            }
            headers = None
            if fault.retry_after is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}"}
            return JSONResponse(body, status_code=429, headers=headers)
        if fault.status == 403:
            return hubspot_error(
                403,
                "This app hasn't been granted all required scopes to make this call.",
                "MISSING_SCOPES",
            )
        if fault.status == 404:
            return _not_found()
        return hubspot_error(fault.status or 500, "internal error", "INTERNAL_ERROR")

    # -- resources (called with the lock held) ----------------------------------------------

    def _account(self, request: Request, body: Any, _: dict[str, str]) -> JSONResponse:
        return JSONResponse(
            {
                "portalId": self.portal_id,
                "accountType": "STANDARD",
                "timeZone": "US/Eastern",
                "companyCurrency": "USD",
                "additionalCurrencies": [],
                "utcOffset": "-05:00",
                "utcOffsetMilliseconds": -18000000,
                "uiDomain": "app.hubspot.com",
                "dataHostingLocation": "na1",
            }
        )

    def _new_object(self, store: dict[str, Record], properties: dict[str, Any]) -> Record:
        object_id = str(next(self._ids))
        now = _now()
        record: Record = {
            "id": object_id,
            "properties": {
                **{k: v for k, v in properties.items() if v is not None},
                "hs_object_id": object_id,
                "createdate": now,
                "lastmodifieddate": now,
            },
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
            "created": time.monotonic(),
        }
        store[object_id] = record
        return record

    @staticmethod
    def _shown(record: Record, wanted: list[str] | None) -> Record:
        props = record["properties"]
        names = wanted if wanted else list(DEFAULT_CONTACT_PROPERTIES)
        always = ("hs_object_id", "createdate", "lastmodifieddate")
        shown = {name: props.get(name) for name in dict.fromkeys([*names, *always])}
        return {
            "id": record["id"],
            "properties": shown,
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "archived": False,
        }

    @staticmethod
    def _unknown(properties: Any, known: frozenset[str]) -> JSONResponse | None:
        if not isinstance(properties, dict):
            return _invalid("Invalid input JSON: properties must be an object")
        bad = [name for name in properties if name not in known]
        if bad:
            return _invalid(
                "Property values were not valid: "
                + json.dumps(
                    [
                        {
                            "isValid": False,
                            "message": f'Property "{name}" does not exist',
                            "error": "PROPERTY_DOESNT_EXIST",
                            "name": name,
                        }
                        for name in bad
                    ]
                )
            )
        return None

    def _search_contacts(self, request: Request, body: Any, _: dict[str, str]) -> JSONResponse:
        body = body if isinstance(body, dict) else {}
        groups = body.get("filterGroups") or []
        filters = [f for g in groups for f in (g.get("filters") or [])]
        if (
            len(groups) > MAX_FILTER_GROUPS
            or any(len(g.get("filters") or []) > MAX_FILTERS_PER_GROUP for g in groups)
            or len(filters) > MAX_FILTERS
        ):
            return _invalid(
                "There was a problem with the request: too many filterGroups or filters "
                f"(at most {MAX_FILTER_GROUPS} groups, {MAX_FILTERS_PER_GROUP} filters each, "
                f"{MAX_FILTERS} in all)."
            )
        limit = int(body.get("limit") or 10)
        if limit > MAX_SEARCH_LIMIT:
            return _invalid(f"limit must be at most {MAX_SEARCH_LIMIT}")
        visible_before = time.monotonic() - self.search_lag_seconds
        found = [
            c
            for c in self.state.contacts.values()
            if c["created"] <= visible_before
            and (not groups or any(self._group_matches(c, g) for g in groups))
        ]
        found.sort(key=lambda c: int(c["id"]))
        after = int(body.get("after") or 0)
        page = found[after : after + limit]
        out: Record = {
            "total": len(found),
            "results": [self._shown(c, body.get("properties")) for c in page],
        }
        if after + limit < len(found):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return JSONResponse(out)

    def _group_matches(self, contact: Record, group: Record) -> bool:
        return all(self._filter_matches(contact, f) for f in group.get("filters") or [])

    @staticmethod
    def _value(contact: Record, name: str) -> str | None:
        props = contact["properties"]
        if name == "hs_searchable_calculated_phone_number":
            return searchable_digits(props.get("phone"))
        if name == "hs_searchable_calculated_mobile_number":
            return searchable_digits(props.get("mobilephone"))
        value = props.get(name)
        return None if value is None else str(value)

    def _filter_matches(self, contact: Record, flt: Record) -> bool:
        value = self._value(contact, str(flt.get("propertyName")))
        operator = flt.get("operator")
        wanted = flt.get("value")
        if operator == "HAS_PROPERTY":
            return value is not None
        if operator == "NOT_HAS_PROPERTY":
            return value is None
        if value is None:
            return False
        if operator == "EQ":
            return value.lower() == str(wanted).lower()
        if operator == "NEQ":
            return value.lower() != str(wanted).lower()
        if operator == "IN":
            return value.lower() in [str(v).lower() for v in flt.get("values") or []]
        return False

    def _create_contact(self, request: Request, body: Any, _: dict[str, str]) -> JSONResponse:
        properties: Any = body.get("properties") if isinstance(body, dict) else None
        refused = self._unknown(properties, CONTACT_PROPERTIES)
        if refused is not None:
            return refused
        record = self._new_object(self.state.contacts, properties)
        return JSONResponse(self._shown(record, list(properties)), status_code=201)

    def _get_contact(self, request: Request, body: Any, match: dict[str, str]) -> JSONResponse:
        record = self.state.contacts.get(match["id"])
        if record is None:
            return _not_found()
        wanted = [
            name
            for value in request.query_params.getlist("properties")
            for name in value.split(",")
            if name
        ]
        return JSONResponse(self._shown(record, wanted))

    def _call_problem(self, properties: Record) -> JSONResponse | None:
        refused = self._unknown(properties, CALL_PROPERTIES)
        if refused is not None:
            return refused
        status = properties.get("hs_call_status")
        if status is not None and status not in CALL_STATUSES:
            return _invalid(f"{status} was not one of the allowed options for hs_call_status")
        direction = properties.get("hs_call_direction")
        if direction is not None and direction not in ("INBOUND", "OUTBOUND"):
            return _invalid(f"{direction} was not one of the allowed options for hs_call_direction")
        duration = properties.get("hs_call_duration")
        if duration is not None and not str(duration).isdigit():
            return _invalid(f"{duration} is not a valid number for hs_call_duration")
        url = properties.get("hs_call_recording_url")
        if url is not None and not str(url).startswith("https://"):
            return _invalid("hs_call_recording_url must be an HTTPS URL")
        return None

    def _create_call(self, request: Request, body: Any, _: dict[str, str]) -> JSONResponse:
        body = body if isinstance(body, dict) else {}
        properties = body.get("properties")
        refused = self._call_problem(properties or {}) if properties is not None else None
        if properties is None or refused is not None:
            return refused or _invalid("properties is required")
        if not properties.get("hs_timestamp"):
            return _invalid("Property values were not valid: hs_timestamp is required")
        links: list[tuple[str, int]] = []
        for association in body.get("associations") or []:
            target = str((association.get("to") or {}).get("id"))
            types = association.get("types") or []
            if target not in self.state.contacts:
                return _invalid(f"One or more associations are invalid: no contact {target}")
            for kind in types:
                if (
                    kind.get("associationCategory") != "HUBSPOT_DEFINED"
                    or kind.get("associationTypeId") != CALL_TO_CONTACT
                ):
                    return _invalid(f"One or more associations are invalid: {kind}")
                links.append((target, CALL_TO_CONTACT))
        record = self._new_object(self.state.calls, properties)
        for target, kind_id in links:
            self.state.associations.append((record["id"], target, kind_id))
        return JSONResponse(self._shown(record, list(properties)), status_code=201)

    def _get_call(self, request: Request, body: Any, match: dict[str, str]) -> JSONResponse:
        record = self.state.calls.get(match["id"])
        if record is None:
            return _not_found()
        return JSONResponse(self._shown(record, list(record["properties"])))

    def _update_call(self, request: Request, body: Any, match: dict[str, str]) -> JSONResponse:
        record = self.state.calls.get(match["id"])
        if record is None:
            return _not_found()
        properties = body.get("properties") if isinstance(body, dict) else None
        refused = self._call_problem(properties if isinstance(properties, dict) else {})
        if not isinstance(properties, dict) or refused is not None:
            return refused or _invalid("properties is required")
        now = _now()
        record["properties"].update(properties, lastmodifieddate=now)
        record["updatedAt"] = now
        return JSONResponse(self._shown(record, list(properties)))


@pytest.fixture(scope="session")
def hubspot_server() -> Iterator[HubSpotStandin]:
    with running(HubSpotStandin()) as standin:
        yield standin


@pytest.fixture(scope="session", autouse=True)
def _hubspot_is_never_the_real_one(hubspot_server: HubSpotStandin) -> Iterator[None]:
    """Settings read HUBSPOT_API_BASE_URL from the environment: every app built in the tests
    talks to the stand-in, never to api.hubapi.com (an unknown token gets its 401)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HUBSPOT_API_BASE_URL", hubspot_server.base_url)
        yield


@pytest.fixture
def hubspot(hubspot_server: HubSpotStandin) -> Iterator[HubSpotStandin]:
    """The session's HubSpot stand-in, empty: no contacts, calls, requests or faults."""
    with reset_around(hubspot_server) as standin:
        yield standin
