"""Twilio ConversationRelay's side of a call, over a real WebSocket to the app.

What Twilio does once a call is answered: it fetches the app's TwiML (signed), reads the
`<Connect><ConversationRelay>` it answers, opens the WebSocket named there with an
X-Twilio-Signature on the upgrade request, sends `setup`, then the callee's words as
`prompt` messages (and `interrupt`, `dtmf`), and receives the agent's `text` tokens and `end`.
When the session ends it posts to the `<Connect action>` URL, and the call completes. An inbound
call starts with `ring`: Twilio posts to the number's voice URL, whose answer is that TwiML.

    relay = await answer(twilio_standin, client, live, call_sid)
    await relay.say("Hello?")
    assert await relay.reply() == "Hi John, ..."
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import uvicorn
import websockets
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection

from tests.standins.server import listening_socket, quiet_config
from tests.standins.twilio import TwilioStandin
from tests.standins.twilio_wire import new_sid


class _InLoopServer(uvicorn.Server):
    """uvicorn inside the test's own event loop (the app's engine lives on that loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class LiveServer:
    """The app served over real HTTP and WebSockets on 127.0.0.1, in the test's loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._socket = sock = listening_socket()
        self.port = int(sock.getsockname()[1])
        config = quiet_config(self.app, ws="websockets-sansio", timeout_graceful_shutdown=2)
        self._server = _InLoopServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        if self._socket is not None:
            self._socket.close()

    async def __aenter__(self) -> LiveServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@dataclass
class RelayTwiml:
    """What the app's TwiML asked of ConversationRelay."""

    url: str
    action: str | None
    attributes: dict[str, str]
    parameters: dict[str, str]

    @classmethod
    def parse(cls, document: str) -> RelayTwiml:
        root = ET.fromstring(document)  # noqa: S314 (the app's own TwiML)
        connect = root.find("Connect")
        assert connect is not None, document
        relay = connect.find("ConversationRelay")
        assert relay is not None, document
        parameters = {p.attrib["name"]: p.attrib["value"] for p in relay.findall("Parameter")}
        return cls(
            url=relay.attrib["url"],
            action=connect.attrib.get("action"),
            attributes=dict(relay.attrib),
            parameters=parameters,
        )


@dataclass
class RelaySession:
    standin: TwilioStandin
    client: httpx.AsyncClient
    call_sid: str
    twiml: RelayTwiml
    ws: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def say(self, text: str, *, lang: str = "en-US") -> None:
        """The callee said `text` (Twilio's transcription of it)."""
        await self.send({"type": "prompt", "voicePrompt": text, "lang": lang, "last": True})

    async def interrupt(self, heard: str, duration_ms: int = 900) -> None:
        """The callee spoke over the agent after hearing `heard`."""
        await self.send(
            {
                "type": "interrupt",
                "utteranceUntilInterrupt": heard,
                "durationUntilInterruptMs": duration_ms,
            }
        )

    async def press(self, digit: str) -> None:
        await self.send({"type": "dtmf", "digit": digit})

    async def next_message(self, within: float = 5.0) -> dict[str, Any]:
        if self._pending:
            return self._pending.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), within)
        message = json.loads(raw)
        self.received.append(message)
        return dict(message)

    async def tokens(self, count: int, within: float = 5.0) -> list[str]:
        """The next `count` text tokens (not waiting for the last one)."""
        out: list[str] = []
        while len(out) < count:
            message = await self.next_message(within)
            assert message["type"] == "text", message
            out.append(message["token"])
        return out

    async def reply(self, within: float = 5.0) -> str:
        """The agent's whole reply: text tokens up to the one marked `last`."""
        parts = []
        while True:
            message = await self.next_message(within)
            assert message["type"] == "text", message
            parts.append(message["token"])
            if message.get("last"):
                return "".join(parts)

    async def ended(self, within: float = 5.0) -> dict[str, Any]:
        """Wait for the app's `end` (skipping text); Twilio then runs the Connect action."""
        while True:
            message = await self.next_message(within)
            if message["type"] == "end":
                return message

    async def finish(self, *, handoff: str = "", duration: int = 30) -> httpx.Response:
        """Twilio's end of the session: the socket closes, the Connect action is posted."""
        await self.ws.close()
        assert self.twiml.action is not None
        params = {
            "AccountSid": self.standin.account_sid,
            "CallSid": self.call_sid,
            "CallStatus": "in-progress",
            "SessionId": "VX" + "0" * 32,
            "SessionStatus": "ended",
            "SessionDuration": str(duration),
            "HandoffData": handoff,
        }
        return await post_signed(self.standin, self.client, self.twiml.action, params)

    async def wait_closed(self, within: float = 5.0) -> None:
        await asyncio.wait_for(self.ws.wait_closed(), within)


def ws_address(live: LiveServer, public_url: str) -> str:
    """Where to reach the public wss:// URL in a test (a proxy would do it in production)."""
    parts = urlsplit(public_url)
    return f"ws://127.0.0.1:{live.port}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def signature(standin: TwilioStandin, url: str, params: dict[str, str] | None = None) -> str:
    return str(RequestValidator(standin.auth_token).compute_signature(url, params or {}))


async def post_signed(
    standin: TwilioStandin, client: httpx.AsyncClient, url: str, params: dict[str, str]
) -> httpx.Response:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature(standin, url, params),
    }
    return await client.post(path, content=urlencode(params), headers=headers)


@contextlib.asynccontextmanager
async def relay_socket(
    standin: TwilioStandin, live: LiveServer, public_url: str, *, signed: bool = True
) -> AsyncIterator[ClientConnection]:
    headers = {"X-Twilio-Signature": signature(standin, public_url)} if signed else {}
    async with websockets.connect(
        ws_address(live, public_url), additional_headers=headers, open_timeout=5
    ) as ws:
        yield ws


async def connect_relay(
    standin: TwilioStandin,
    client: httpx.AsyncClient,
    live: LiveServer,
    call_sid: str,
    twiml: RelayTwiml,
    *,
    direction: str = "outbound-api",
) -> RelaySession:
    headers = {"X-Twilio-Signature": signature(standin, twiml.url)}
    ws = await websockets.connect(
        ws_address(live, twiml.url), additional_headers=headers, open_timeout=5
    )
    record = standin.call(call_sid)
    session = RelaySession(standin, client, call_sid, twiml, ws)
    await session.send(
        {
            "type": "setup",
            "sessionId": new_sid("VX"),
            "accountSid": standin.account_sid,
            "parentCallSid": "",
            "callSid": call_sid,
            "from": record["from"],
            "to": record["to"],
            "forwardedFrom": "",
            "callType": "PSTN",
            "callerName": "",
            "direction": direction,
            "callStatus": "IN-PROGRESS",
            "customParameters": twiml.parameters,
        }
    )
    return session


async def answer(
    standin: TwilioStandin, client: httpx.AsyncClient, live: LiveServer, call_sid: str
) -> RelaySession:
    """The callee picks up: Twilio fetches the TwiML and opens the relay socket."""
    r = await standin.deliver(client, standin.twiml_request(call_sid))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/xml")
    return await connect_relay(standin, client, live, call_sid, RelayTwiml.parse(r.text))


async def ring(
    standin: TwilioStandin, client: httpx.AsyncClient, to: str, caller: str
) -> tuple[str, httpx.Response]:
    """A call from `caller` reaches our number `to`: Twilio posts to the number's voice URL,
    signed. Returns the new Call SID and the app's answer (its TwiML)."""
    sid = standin.add_call(to, caller, direction="inbound", status="ringing")
    params = {
        "AccountSid": standin.account_sid,
        "CallSid": sid,
        "From": caller,
        "To": to,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    url = "https://talkstack.test/twilio/voice/inbound"
    return sid, await post_signed(standin, client, url, params)
