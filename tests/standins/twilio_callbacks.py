"""Twilio's side of a call: the signed requests it makes to the app.

The TwiML fetch when the callee answers, and the status, recording and async-AMD callbacks, each
to the exact URL the app gave when it created the call, signed with the account's auth token as
Twilio signs them (X-Twilio-Signature). A test writes:

    placed = await adapter.create_call(...)
    cb = twilio_standin.callback(placed.sid, "status", CallStatus="completed", CallDuration="42")
    r = await twilio_standin.deliver(client, cb)

Callbacks also move the call resource along (a `completed` status callback completes the call,
an AMD verdict sets answered_by), so what the app later fetches from Twilio agrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from tests.standins.twilio_calls import CallsResource, CallState
from tests.standins.twilio_wire import API_VERSION, new_sid, rfc2822

CallbackKind = Literal["status", "recording", "amd"]

# The create parameter that names each callback's URL.
CALLBACK_URL_PARAM = {
    "status": "StatusCallback",
    "recording": "RecordingStatusCallback",
    "amd": "AsyncAmdStatusCallback",
}
ANSWERED_BY = (
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
    "unknown",
)
_SIP_RESPONSE = {
    "completed": "200",
    "busy": "486",
    "no-answer": "487",
    "canceled": "487",
    "failed": "500",
}


@dataclass(frozen=True)
class TwilioCallback:
    """One request Twilio makes to the app: POST `params` as a form to `url`, with `headers`.

    `url` is the exact URL the app gave Twilio; the signature covers it and `params`.
    """

    url: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def path(self) -> str:
        """The URL's path and query: what to post to on an in-process (ASGI) client."""
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")


class CallCallbacks(CallsResource):
    """The requests Twilio makes to the app during a call, signed."""

    def callback(self, call_sid: str, kind: CallbackKind, **fields: Any) -> TwilioCallback:
        """The signed callback Twilio would send now; `fields` override or (None) drop params.

        status: CallStatus defaults to the call's status; `completed` carries CallDuration
        and Duration. recording: a completed recording. amd: AnsweredBy defaults to human.
        """
        overrides = dict(fields)
        with self._lock:
            call = self._calls[call_sid]
            url = call.param(CALLBACK_URL_PARAM[kind])
            if url is None:
                raise ValueError(f"call {call_sid} was created without {CALLBACK_URL_PARAM[kind]}")
            if kind == "status":
                params = self._status_params(call, overrides)
            elif kind == "recording":
                params = self._recording_params(call, overrides)
            else:
                params = self._amd_params(call, overrides)
        return self._signed(url, params, overrides)

    def twiml_request(self, call_sid: str, **fields: Any) -> TwilioCallback:
        """The signed POST Twilio makes to the call's Url once it is answered."""
        with self._lock:
            call = self._calls[call_sid]
            url = call.param("Url")
            if url is None:
                raise ValueError(f"call {call_sid} was created without Url")
            self._move(call, "in-progress")
            params = {
                **self._call_params(call),
                "CallStatus": "in-progress",
            }
        return self._signed(url, params, fields)

    async def deliver(self, client: httpx.AsyncClient, cb: TwilioCallback) -> httpx.Response:
        """Post `cb` as Twilio does, to its path and query on `client` (ASGI or real).

        The app's public host is not reachable in tests; the signature still covers the
        full public URL.
        """
        return await client.post(cb.path, content=urlencode(cb.params), headers=cb.headers)

    def _call_params(self, call: CallState) -> dict[str, str]:
        record = call.record
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": record["sid"],
            "CallStatus": record["status"],
            "Called": record["to"],
            "Caller": record["from"],
            "Direction": record["direction"],
            "From": record["from"],
            "To": record["to"],
        }

    def _status_params(self, call: CallState, fields: dict[str, Any]) -> dict[str, str]:
        status = str(fields.get("CallStatus") or call.record["status"])
        duration = fields.get("CallDuration")
        # `initiated` is an event, not a state of the resource: _move leaves the call alone.
        self._move(call, status, None if duration is None else str(duration))
        params = {
            **self._call_params(call),
            "CallStatus": status,
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(call.sequence),
            "Timestamp": rfc2822(),
        }
        call.sequence += 1
        if status == "completed":
            seconds = int(call.record["duration"] or 0)
            params["CallDuration"] = str(seconds)
            params["Duration"] = str(max(1, math.ceil(seconds / 60)))  # billed minutes
        if status in _SIP_RESPONSE:
            params["SipResponseCode"] = _SIP_RESPONSE[status]
        if call.record["answered_by"]:
            params["AnsweredBy"] = call.record["answered_by"]
        return params

    def _recording_params(self, call: CallState, fields: dict[str, Any]) -> dict[str, str]:
        record = call.record
        recording_sid = str(fields.get("RecordingSid") or new_sid("RE"))
        return {
            "AccountSid": self.account_sid,
            "CallSid": record["sid"],
            "RecordingSid": recording_sid,
            # Without an extension: Twilio serves WAV there, and .mp3 / .json beside it.
            "RecordingUrl": f"https://api.twilio.com/{API_VERSION}/Accounts/"
            f"{self.account_sid}/Recordings/{recording_sid}",
            "RecordingStatus": "completed",
            "RecordingDuration": str(record["duration"] or "0"),
            "RecordingChannels": "1",
            "RecordingSource": "OutboundAPI",
            "RecordingStartTime": record["start_time"] or rfc2822(),
        }

    def _amd_params(self, call: CallState, fields: dict[str, Any]) -> dict[str, str]:
        answered_by = str(fields.get("AnsweredBy") or "human")
        if answered_by not in ANSWERED_BY:
            raise ValueError(f"Twilio never answers AnsweredBy={answered_by!r}")
        call.record["answered_by"] = answered_by
        return {
            "AccountSid": self.account_sid,
            "CallSid": call.record["sid"],
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": "2400",
        }

    def _signed(
        self, url: str, params: dict[str, str], overrides: dict[str, Any]
    ) -> TwilioCallback:
        for key, value in overrides.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = str(value)
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
            "X-Twilio-Signature": signature,
        }
        return TwilioCallback(url=url, params=params, headers=headers)
