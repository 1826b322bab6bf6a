"""A Twilio stand-in: a real HTTP server on 127.0.0.1 that speaks Twilio's 2010-04-01 REST API.

The adapter reaches it through TWILIO_API_BASE_URL, so the official SDK does the real work:
HTTP Basic auth, form bodies, Twilio's JSON, paging and error bodies. Every request is recorded
for assertions, and faults (5xx answers, hangs) can be injected.

Use the `twilio_standin` fixture (one server per session, state reset for each test):

    async def test_x(twilio_standin):
        sid = twilio_standin.add_incoming_number("+14155550100")
        settings = Settings(**twilio_standin.settings_overrides(), ...)
        ...
        assert twilio_standin.last_request.param("VoiceUrl") == "https://..."

Resources live in `routes()`; a new one is a handler plus one line there, with its records in
`_State`. Calls live in twilio_calls.py; the signed requests Twilio makes to the app (TwiML,
status, recording and AMD callbacks) in twilio_callbacks.py.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.standins import twilio_wire as wire
from tests.standins.server import LocalServer, reset_around, running
from tests.standins.twilio_callbacks import CallCallbacks, TwilioCallback
from tests.standins.twilio_wire import API_VERSION, Handler, Record, RecordedRequest, rfc2822

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "standin-auth-token-" + "f" * 13

__all__ = ["ACCOUNT_SID", "AUTH_TOKEN", "TwilioCallback", "TwilioStandin"]


@dataclass
class _Fault:
    status: int | None  # None: hang
    seconds: float = 0.0
    code: int | None = None
    message: str | None = None


_FAULTS = {
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
    503: (20503, "Service Unavailable"),
}


def _fault_error(fault: _Fault) -> JSONResponse:
    status = fault.status or 500
    code, message = _FAULTS.get(status, _FAULTS[500])
    return wire.twilio_error(status, fault.code or code, fault.message or message)


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


@dataclass
class _State:
    incoming_numbers: dict[str, Record] = field(default_factory=dict)
    caller_ids: dict[str, Record] = field(default_factory=dict)


class TwilioStandin(CallCallbacks):
    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        # Twilio's default page size; lower it to make the SDK follow next_page_uri.
        self.page_size = 50
        # Twilio's largest page; lower it to make the SDK page even when it asks for more.
        self.max_page_size = 1000
        self.requests: list[RecordedRequest] = []
        self.state = _State()
        self._reset_calls()
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._routes = [
            _Route(method, re.compile(pattern), handler)
            for method, pattern, handler in self.routes()
        ]
        app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._dispatch,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                )
            ]
        )
        self._server = LocalServer(app, name="twilio-standin")

    # -- resources -------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path under /2010-04-01/Accounts/{AccountSid}, handler)."""
        pn = r"(?P<sid>PN[0-9a-f]{32})"
        return [
            ("GET", r"/IncomingPhoneNumbers\.json", self._list_incoming),
            ("GET", rf"/IncomingPhoneNumbers/{pn}\.json", self._fetch_incoming),
            ("POST", rf"/IncomingPhoneNumbers/{pn}\.json", self._update_incoming),
            ("GET", r"/OutgoingCallerIds\.json", self._list_caller_ids),
            ("GET", rf"/OutgoingCallerIds/{pn}\.json", self._fetch_caller_id),
            *self.call_routes(),
        ]

    def _account_path(self, rest: str = "") -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}{rest}"

    def _number_sid(self, e164: str) -> str | None:
        with self._lock:
            owned = [*self.state.incoming_numbers.values(), *self.state.caller_ids.values()]
        return next((str(r["sid"]) for r in owned if r["phone_number"] == e164), None)

    async def _list_incoming(self, request: Request, _: dict[str, str]) -> JSONResponse:
        records = list(self.state.incoming_numbers.values())
        if phone := request.query_params.get("PhoneNumber"):
            pattern = wire.phone_filter(phone)
            records = [r for r in records if pattern.search(r["phone_number"])]
        if name := request.query_params.get("FriendlyName"):
            records = [r for r in records if name in r["friendly_name"]]
        return wire.list_page(
            request, "incoming_phone_numbers", records, self.page_size, self.max_page_size
        )

    async def _fetch_incoming(self, request: Request, match: dict[str, str]) -> JSONResponse:
        record = self.state.incoming_numbers.get(match["sid"])
        return JSONResponse(record) if record else wire.not_found(request)

    async def _update_incoming(self, request: Request, match: dict[str, str]) -> JSONResponse:
        record = self.state.incoming_numbers.get(match["sid"])
        if record is None:
            return wire.not_found(request)
        form = await request.form()
        fields = {
            "FriendlyName": "friendly_name",
            "VoiceUrl": "voice_url",
            "VoiceMethod": "voice_method",
            "VoiceFallbackUrl": "voice_fallback_url",
            "VoiceFallbackMethod": "voice_fallback_method",
            "StatusCallback": "status_callback",
            "StatusCallbackMethod": "status_callback_method",
            "SmsUrl": "sms_url",
            "SmsMethod": "sms_method",
        }
        changes: Record = {}
        for name, key in fields.items():
            value = form.get(name)
            if not isinstance(value, str):
                continue
            if name.endswith(("Url", "Callback")) and value and not wire.valid_url(value):
                return wire.twilio_error(400, 21502, f"{name} is not valid: {value}")
            changes[key] = value.upper() if name.endswith("Method") else value
        # Validated first, applied at once: a rejected update changes nothing.
        with self._lock:
            record.update(changes, date_updated=rfc2822())
        return JSONResponse(record)

    async def _list_caller_ids(self, request: Request, _: dict[str, str]) -> JSONResponse:
        records = list(self.state.caller_ids.values())
        # Unlike IncomingPhoneNumbers, this filter is an exact match.
        if phone := request.query_params.get("PhoneNumber"):
            records = [r for r in records if r["phone_number"] == phone]
        return wire.list_page(
            request, "outgoing_caller_ids", records, self.page_size, self.max_page_size
        )

    async def _fetch_caller_id(self, request: Request, match: dict[str, str]) -> JSONResponse:
        record = self.state.caller_ids.get(match["sid"])
        return JSONResponse(record) if record else wire.not_found(request)

    # -- seeding ---------------------------------------------------------------------------

    def add_incoming_number(
        self,
        e164: str,
        *,
        friendly_name: str | None = None,
        voice: bool = True,
        voice_url: str = "",
    ) -> str:
        """An incoming (purchased or ported) number on the account; returns its PN SID."""
        sid = wire.new_sid("PN")
        now = rfc2822()
        base = self._account_path(f"/IncomingPhoneNumbers/{sid}")
        record: Record = {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": API_VERSION,
            "beta": False,
            "bundle_sid": None,
            "capabilities": {"voice": voice, "sms": True, "mms": True, "fax": False},
            "date_created": now,
            "date_updated": now,
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "emergency_status": "Inactive",
            "friendly_name": friendly_name or wire.friendly_name(e164),
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": e164,
            "sid": sid,
            "sms_application_sid": "",
            "sms_fallback_method": "POST",
            "sms_fallback_url": "",
            "sms_method": "POST",
            "sms_url": "",
            "status": "in-use",
            "status_callback": "",
            "status_callback_method": "POST",
            "subresource_uris": {"assigned_add_ons": f"{base}/AssignedAddOns.json"},
            "trunk_sid": None,
            "type": "local",
            "uri": f"{base}.json",
            "voice_application_sid": "",
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": "",
            "voice_method": "POST",
            "voice_receive_mode": "voice",
            "voice_url": voice_url,
        }
        with self._lock:
            self.state.incoming_numbers[sid] = record
        return sid

    def add_caller_id(self, e164: str, *, friendly_name: str | None = None) -> str:
        """A verified outgoing caller id on the account; returns its PN SID."""
        sid = wire.new_sid("PN")
        now = rfc2822()
        record: Record = {
            "account_sid": self.account_sid,
            "date_created": now,
            "date_updated": now,
            "friendly_name": friendly_name or wire.friendly_name(e164),
            "phone_number": e164,
            "sid": sid,
            "uri": self._account_path(f"/OutgoingCallerIds/{sid}.json"),
        }
        with self._lock:
            self.state.caller_ids[sid] = record
        return sid

    def incoming_number(self, sid: str) -> Record:
        with self._lock:
            return dict(self.state.incoming_numbers[sid])

    # -- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        code: int | None = None,
        message: str | None = None,
    ) -> None:
        """The next `count` requests answer `status` with Twilio's error body."""
        with self._lock:
            self._faults.extend(_Fault(status, code=code, message=message) for _ in range(count))

    def hang_next(self, count: int = 1, *, seconds: float = 30.0) -> None:
        """The next `count` requests wait `seconds` (or until reset) before being served."""
        with self._lock:
            self._faults.extend(_Fault(None, seconds) for _ in range(count))

    # -- what was asked --------------------------------------------------------------------

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.endswith(path_suffix) and (method is None or r.method == method)
            ]

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            assert self.requests, "Twilio stand-in received no request"
            return self.requests[-1]

    # -- configuration for the app ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def port(self) -> int:
        return self._server.port

    def settings_overrides(self) -> dict[str, Any]:
        """Settings that point the app at this stand-in with working credentials."""
        return {
            "twilio_account_sid": self.account_sid,
            "twilio_auth_token": self.auth_token,
            "twilio_api_base_url": self.base_url,
        }

    def reset(self) -> None:
        """Forget every number, call, request and fault; release hanging requests."""
        with self._lock:
            self._release.set()
            self._release = threading.Event()
            self.requests = []
            self.state = _State()
            self._reset_calls()
            self._faults.clear()
            self.page_size = 50
            self.max_page_size = 1000

    # -- the server ------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> JSONResponse:
        form: dict[str, list[str]] = {}
        if request.method in ("POST", "PUT", "PATCH"):
            data = await request.form()
            for key in data:
                form[key] = [v for v in data.getlist(key) if isinstance(v, str)]
        auth = wire.basic_auth(request.headers.get("authorization", ""))
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query={k: request.query_params.getlist(k) for k in request.query_params},
            form=form,
            auth=auth,
            headers={k.lower(): v for k, v in request.headers.items()},
        )
        with self._lock:
            self.requests.append(recorded)
            fault = self._faults.popleft() if self._faults else None
            release = self._release
        if fault is not None and fault.status is not None:
            return _fault_error(fault)
        if fault is not None:
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline:
                if release.is_set():
                    # The test is over: answer without touching the next test's state.
                    return _fault_error(_Fault(503))
                await asyncio.sleep(0.02)

        if auth != (self.account_sid, self.auth_token):
            return wire.twilio_error(
                401, 20003, "Authenticate", **{"WWW-Authenticate": wire.BASIC_REALM}
            )
        prefix = self._account_path()
        if not request.url.path.startswith(prefix + "/"):
            return wire.not_found(request)
        rest = request.url.path[len(prefix) :]
        allowed = False
        for route in self._routes:
            match = route.pattern.fullmatch(rest)
            if match is None:
                continue
            allowed = True
            if route.method == request.method:
                response = await route.handler(request, match.groupdict())
                response.headers["Twilio-Request-Id"] = wire.new_sid("RQ")
                return response
        if allowed:
            return wire.twilio_error(405, 20004, "Method not allowed")
        return wire.not_found(request)

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._release.set()
        self._server.stop()


@pytest.fixture(scope="session")
def twilio_standin_server() -> Iterator[TwilioStandin]:
    with running(TwilioStandin()) as standin:
        yield standin


@pytest.fixture
def twilio_standin(twilio_standin_server: TwilioStandin) -> Iterator[TwilioStandin]:
    """The session's Twilio stand-in, empty: no numbers, no recorded requests, no faults."""
    with reset_around(twilio_standin_server) as standin:
        yield standin
