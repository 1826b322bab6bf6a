"""The stand-in's Calls resource: create, fetch, list, hang up; and seeding calls.

Mixed into `TwilioStandin` (through twilio_callbacks.py), so a test writes:

    placed = await adapter.create_call(...)
    twilio_standin.created_calls[-1]["StatusCallbackEvent"]  # what Twilio was asked
    twilio_standin.set_call(placed.sid, status="completed", duration=42, price="-0.01300")
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse

from tests.standins import twilio_wire as wire
from tests.standins.twilio_wire import API_VERSION, Handler, Record, RecordedRequest, rfc2822

# Twilio also accepts unformatted US numbers; the app only ever sends E.164.
_E164ISH = re.compile(r"\+[1-9]\d{6,14}")
_CALL_SID = r"(?P<sid>CA[0-9a-f]{32})"
_URL_PARAMS = (
    "Url",
    "FallbackUrl",
    "StatusCallback",
    "RecordingStatusCallback",
    "AsyncAmdStatusCallback",
)
UNDIALABLE_MESSAGES = {
    13224: "Dial: Twilio does not support calling this number or the number is invalid",
    21214: "'To' phone number cannot be reached",
    21215: "Account not authorized to call {to}. Perhaps you need to enable some international "
    "permissions: https://www.twilio.com/console/voice/calls/geo-permissions/low-risk",
    21216: "Account not allowed to call {to}",
    21217: "Phone number does not appear to be valid",
}
CALL_STATUSES = (
    "queued",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
)
FINAL = ("completed", "busy", "failed", "no-answer", "canceled")

# A test's hook into creating a call, awaited with (stage, Call SID or None) at:
#   "received"  a valid create request arrived; no call exists yet. Answering False drops the
#               request (Twilio never placed the call; the app gets a 503).
#   "created"   the call exists; the answer is not sent yet.
#   "answered"  the 201 answer has gone out.
CreateHook = Callable[[str, str | None], Awaitable[bool | None]]


def _rank(status: str) -> int:
    if status in FINAL:
        return len(CALL_STATUSES)
    return CALL_STATUSES.index(status) if status in CALL_STATUSES else -1


@dataclass
class CallState:
    record: Record
    form: dict[str, list[str]]
    sequence: int = 0

    def param(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[0] if values else None


def _wire_value(key: str, value: Any) -> Any:
    """A test's Python value as Twilio's JSON has it (strings for numbers, RFC 2822 dates)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return rfc2822(value if value.tzinfo else value.replace(tzinfo=UTC))
    if key == "price":
        return f"{Decimal(str(value)):.5f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _start_filter(op: str, raw: str) -> Any:
    """Twilio's StartTime, StartTime> (on or after) and StartTime< (on or before) filters."""
    if len(raw) == 10:
        day = date.fromisoformat(raw)

        def on_day(start: datetime) -> bool:
            d = start.astimezone(UTC).date()
            return d >= day if op == ">" else d <= day if op == "<" else d == day

        return on_day
    moment = datetime.fromisoformat(raw)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def at(start: datetime) -> bool:
        return start >= moment if op == ">" else start <= moment if op == "<" else start == moment

    return at


class CallsResource:
    """Calls: POST/GET Calls.json and GET/POST Calls/{CA}.json, with seeding helpers."""

    # Provided by TwilioStandin.
    account_sid: str
    auth_token: str
    page_size: int
    max_page_size: int
    requests: list[RecordedRequest]
    _lock: threading.Lock

    def _number_sid(self, e164: str) -> str | None:
        """The PN SID of an incoming number or verified caller id with exactly `e164`."""
        raise NotImplementedError

    def _reset_calls(self) -> None:
        self._calls: dict[str, CallState] = {}
        self._undialable: dict[str, tuple[int, str]] = {}
        self.create_hook: CreateHook | None = None

    def call_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", r"/Calls\.json", self._create_call),
            ("GET", r"/Calls\.json", self._list_calls),
            ("GET", rf"/Calls/{_CALL_SID}\.json", self._fetch_call),
            ("POST", rf"/Calls/{_CALL_SID}\.json", self._update_call),
        ]

    # -- the resource ----------------------------------------------------------------------

    async def _create_call(self, request: Request, _: dict[str, str]) -> JSONResponse:
        form = await request.form()
        given = {k: [v for v in form.getlist(k) if isinstance(v, str)] for k in form}

        def one(name: str) -> str:
            values = given.get(name)
            return values[0] if values else ""

        to, from_ = one("To"), one("From")
        if not to:
            return wire.twilio_error(400, 21201, "No 'To' number is specified")
        if not from_:
            return wire.twilio_error(400, 21213, "No 'From' number is specified")
        if not (one("Url") or one("Twiml") or one("ApplicationSid")):
            return wire.twilio_error(400, 21205, "Url parameter is required.")
        for name in _URL_PARAMS:
            if one(name) and not wire.valid_url(one(name)):
                return wire.twilio_error(400, 21205, f"{name} is not a valid URL: {one(name)}")
        if not _E164ISH.fullmatch(to):
            return wire.twilio_error(
                400, 21211, f"The 'To' number {to} is not a valid phone number."
            )
        number_sid = self._number_sid(from_)
        if number_sid is None:
            return wire.twilio_error(
                400,
                21210,
                f"The source phone number provided, {from_}, is not yet verified for your "
                "account. You may only make calls from phone numbers that you've verified or "
                "purchased from Twilio.",
            )
        limit = one("TimeLimit")
        if limit and not (limit.isdigit() and int(limit) > 0):
            return wire.twilio_error(400, 20001, f"TimeLimit must be a positive integer: {limit}")
        with self._lock:
            refused = self._undialable.get(to)
        if refused is not None:
            return wire.twilio_error(400, *refused)
        hook = self.create_hook
        if hook is not None and await hook("received", None) is False:
            return wire.twilio_error(503, 20503, "Service Unavailable")
        record = self._call_record(to, from_, phone_number_sid=number_sid)
        with self._lock:
            self._calls[record["sid"]] = CallState(record, given)
        if hook is None:
            return JSONResponse(record, status_code=201)
        await hook("created", record["sid"])
        return JSONResponse(
            record, status_code=201, background=BackgroundTask(hook, "answered", record["sid"])
        )

    async def _list_calls(self, request: Request, _: dict[str, str]) -> JSONResponse:
        with self._lock:
            # Twilio lists the most recent calls first.
            records = [dict(c.record) for c in reversed(self._calls.values())]
        query = request.query_params
        for key in ("To", "From", "Status", "ParentCallSid"):
            if value := query.get(key):
                field = "parent_call_sid" if key == "ParentCallSid" else key.lower()
                records = [r for r in records if r[field] == value]
        for op in ("", ">", "<"):
            raw = query.get(f"StartTime{op}")
            if not raw:
                continue
            try:
                keep = _start_filter(op, raw)
            except ValueError:
                return wire.twilio_error(400, 20001, f"StartTime{op} is not a valid date: {raw}")
            records = [
                r
                for r in records
                if (start := wire.parse_rfc2822(r["start_time"])) is not None and keep(start)
            ]
        return wire.list_page(request, "calls", records, self.page_size, self.max_page_size)

    async def _fetch_call(self, request: Request, match: dict[str, str]) -> JSONResponse:
        with self._lock:
            call = self._calls.get(match["sid"])
            record = dict(call.record) if call else None
        return JSONResponse(record) if record else wire.not_found(request)

    async def _update_call(self, request: Request, match: dict[str, str]) -> JSONResponse:
        form = await request.form()
        status = form.get("Status")
        if status is not None and status not in ("completed", "canceled"):
            return wire.twilio_error(
                400, 20001, f"Status must be 'canceled' or 'completed', not {status}"
            )
        redirect = form.get("Twiml") or form.get("Url")
        with self._lock:
            call = self._calls.get(match["sid"])
            if call is None:
                return wire.not_found(request)
            current = call.record["status"]
            if redirect is not None and current in FINAL:
                return wire.twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.")
            # `canceled` only stops a call that is not answered yet; `completed` hangs up
            # either way. A finished call stays as it is.
            if current in ("queued", "ringing") and status is not None:
                self._move(call, "canceled")
            elif current == "in-progress" and status == "completed":
                self._move(call, "completed")
            record = dict(call.record)
        return JSONResponse(record)

    def _call_record(
        self,
        to: str,
        from_: str,
        *,
        status: str = "queued",
        direction: str = "outbound-api",
        phone_number_sid: str | None = None,
    ) -> Record:
        sid = wire.new_sid("CA")
        now = rfc2822()
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}"
        subresources = (
            "notifications",
            "recordings",
            "payments",
            "events",
            "siprec",
            "streams",
            "transcriptions",
            "user_defined_message_subscriptions",
            "user_defined_messages",
        )
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": direction,
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": from_,
            "from_formatted": wire.friendly_name(from_),
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": phone_number_sid,
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": None,
            "status": status,
            "subresource_uris": {
                name: f"{base}/{''.join(p.title() for p in name.split('_'))}.json"
                for name in subresources
            },
            "to": to,
            "to_formatted": wire.friendly_name(to),
            "trunk_sid": None,
            "uri": f"{base}.json",
        }

    def _move(self, call: CallState, status: str, duration: str | None = None) -> None:
        """Put the call in `status`, with the times and duration Twilio would show.

        Only forward: a progress event (`initiated`), a late or a repeated one leaves the call
        resource as it is, and a finished call never changes.
        """
        record = call.record
        if status not in CALL_STATUSES or _rank(status) <= _rank(record["status"]):
            return
        now = datetime.now(UTC).replace(microsecond=0)
        started = wire.parse_rfc2822(record["start_time"])
        if status == "in-progress" and started is None:
            record["start_time"] = rfc2822(now)
        if status == "completed":
            if duration is None:
                duration = str(int((now - started).total_seconds())) if started else "0"
            if started is None:
                record["start_time"] = rfc2822(now - timedelta(seconds=int(duration)))
            record["duration"] = duration
        elif status in FINAL:
            record["start_time"] = record["start_time"] or rfc2822(now)
            record["duration"] = "0"
        if status in FINAL:
            record["end_time"] = rfc2822(now)
        record["status"] = status
        record["date_updated"] = rfc2822(now)

    # -- seeding ---------------------------------------------------------------------------

    def add_call(
        self, to: str, from_: str, *, direction: str = "outbound-api", **fields: Any
    ) -> str:
        """A call the app did not place through this stand-in (inbound, or made elsewhere)."""
        record = self._call_record(to, from_, direction=direction)
        with self._lock:
            self._calls[record["sid"]] = CallState(record, {})
        if fields:
            self.set_call(record["sid"], **fields)
        return str(record["sid"])

    def set_call(self, sid: str, **fields: Any) -> Record:
        """Set the call resource's JSON fields: status="completed", duration=42,
        price="-0.01300" (or a Decimal), answered_by="human", start_time=datetime(...)...
        """
        with self._lock:
            record = self._calls[sid].record
            for key, value in fields.items():
                name = "from" if key == "from_" else key
                if name not in record:
                    raise KeyError(f"a Twilio call has no field {name!r}")
                record[name] = _wire_value(name, value)
            return dict(record)

    def call(self, sid: str) -> Record:
        with self._lock:
            return dict(self._calls[sid].record)

    def make_undialable(self, e164: str, code: int = 21217, message: str | None = None) -> None:
        """Creating a call to `e164` fails with Twilio's 400 `code` (e.g. 21214-21217, 13224)."""
        text = message or UNDIALABLE_MESSAGES.get(code, "The call could not be placed")
        with self._lock:
            self._undialable[e164] = (code, text.format(to=e164))

    def redirects(self, sid: str) -> list[str]:
        """The TwiML documents the app asked to replace call `sid`'s with (refused ones too)."""
        return [
            r.form["Twiml"][0]
            for r in self.requests_to(f"/Calls/{sid}.json", "POST")
            if "Twiml" in r.form
        ]

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        raise NotImplementedError  # TwilioStandin's

    @property
    def call_sids(self) -> list[str]:
        """Every call the stand-in knows, oldest first."""
        with self._lock:
            return list(self._calls)

    @property
    def created_calls(self) -> list[dict[str, list[str]]]:
        """The form of every POST to Calls.json, in order (rejected ones too)."""
        with self._lock:
            return [
                r.form
                for r in self.requests
                if r.method == "POST" and r.path.endswith("/Calls.json")
            ]
