"""A project-webhook receiver: a real HTTP server that records every delivery as it arrived.

It can answer 500 to the first N requests, hang (never answer) until told to stop, and take a
little time per request (so deliveries sent in parallel would visibly overtake each other).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tests.standins.server import LocalServer, running


@dataclass(frozen=True)
class Delivery:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class WebhookReceiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.fail_first = 0  # answer 500 to this many requests, then 200
        self.hang = False  # hold every request without answering
        self.delay = 0.0  # seconds to take before answering
        self.requests = 0
        # Requests being answered at once, per path, and the most there ever were.
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            # A plain function: uvicorn tells ASGI 3 from ASGI 2 by it.
            await self._handle(scope, receive, send)

        self._server = LocalServer(app, "webhook-receiver")
        self._closing = False

    @property
    def url(self) -> str:
        return f"{self._server.base_url}/hooks/talkstack"

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._closing = True
        self._server.stop()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Delivery]:
        """The first `count` deliveries, once they have all arrived."""
        deadline = time.monotonic() + within
        while len(self.deliveries) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} deliveries within {within} s, got {len(self.deliveries)}"
                )
            await asyncio.sleep(0.01)
        return self.deliveries[:count]

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        delivery = Delivery(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=b"".join(chunks),
        )
        with self._lock:
            self.requests += 1
            failing = self.requests <= self.fail_first
            self.deliveries.append(delivery)
            path = delivery.path
            self.in_flight[path] = self.in_flight.get(path, 0) + 1
            self.peak_in_flight[path] = max(self.peak_in_flight.get(path, 0), self.in_flight[path])
        try:
            # The flag is flipped from the test's thread and loop: an asyncio.Event cannot be.
            while self.hang and not self._closing:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            with self._lock:
                self.in_flight[path] -= 1
        status = 500 if failing else 200
        body = b'{"error":"try again"}' if failing else b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def running_receiver() -> AbstractContextManager[WebhookReceiver]:
    """A fresh receiver, listening for the `with` block."""
    return running(WebhookReceiver())
