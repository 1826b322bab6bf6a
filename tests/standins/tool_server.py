"""A user's tool endpoint: a real HTTP server that an agent's custom tool points at.

It records every request (headers and raw body, to check the signature) and answers what the
test scripted: a body and status, a delay (longer than the tool's timeout, to time out), or an
answer larger than the app takes.

    with running(ToolServer()) as tools:
        tools.answer(b'{"booked": true}')
        ...
        [request] = tools.requests
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

from tests.standins.server import LocalServer


@dataclass(frozen=True)
class ToolRequest:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    delay: float = 0.0


class ToolServer:
    def __init__(self) -> None:
        self.requests: list[ToolRequest] = []
        self._answers: list[_Answer] = []
        self._lock = threading.Lock()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await self._handle(scope, receive, send)

        self._server = LocalServer(app, name="tool-server")

    @property
    def url(self) -> str:
        return self._server.base_url + "/tools/book"

    def answer(self, body: bytes | str, *, status: int = 200, delay: float = 0.0) -> None:
        """The next request's answer (then the default: 200 `{"ok": true}`)."""
        raw = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._answers.append(_Answer(status, raw, delay))

    async def wait_for(self, count: int, within: float = 5.0) -> list[ToolRequest]:
        deadline = asyncio.get_running_loop().time() + within
        while len(self.requests) < count:
            assert asyncio.get_running_loop().time() < deadline, f"{len(self.requests)} requests"
            await asyncio.sleep(0.01)
        return self.requests[:count]

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.requests.append(ToolRequest(scope["path"], headers, b"".join(chunks)))
            answer = self._answers.pop(0) if self._answers else _Answer()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
