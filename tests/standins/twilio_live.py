"""Calls that go on by themselves, as at the real Twilio: every call the app creates sends its
status callbacks over real HTTP to the URLs the app gave, signed, without the test posting them.

    live = LiveCalls(twilio_standin)
    twilio_standin.create_hook = live.on_create

`initiated` is delivered before the create request is answered (at Twilio it often beats the
answer: the app must take a callback for a Call SID it has not stored yet), then `ringing`,
`in-progress` and `completed` follow. A callback the app cannot take (its process is gone) is
lost: Twilio does not retry status callbacks. The app must be reachable at the URLs it gave
(PUBLIC_BASE_URL pointing at the real server process).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx

from tests.standins.twilio_callbacks import CallCallbacks


@dataclass(frozen=True)
class Delivery:
    sid: str
    status: str
    answer: int | None  # the app's HTTP status; None: not delivered (the app was not there)


class LiveCalls:
    def __init__(
        self, standin: CallCallbacks, *, step_seconds: float = 0.15, talk_seconds: float = 0.5
    ) -> None:
        self.standin = standin
        self.step_seconds = step_seconds
        self.talk_seconds = talk_seconds
        self._deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    def stop(self) -> None:
        """No more callbacks (the progress of calls still going is dropped)."""
        self._stopped = True

    async def on_create(self, stage: str, sid: str | None) -> None:
        """A `CreateHook` (twilio_calls.py)."""
        if stage != "created" or sid is None:
            return
        await self.send(sid, "initiated")
        task = asyncio.create_task(self._progress(sid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _progress(self, sid: str) -> None:
        for status, wait in (
            ("ringing", self.step_seconds),
            ("in-progress", self.step_seconds),
            ("completed", self.talk_seconds),
        ):
            await asyncio.sleep(wait)
            extra = {"CallDuration": "1"} if status == "completed" else {}
            await self.send(sid, status, **extra)

    async def send(self, sid: str, status: str, **fields: str) -> None:
        if self._stopped:
            return
        try:
            cb = self.standin.callback(sid, "status", CallStatus=status, **fields)
        except KeyError:
            return  # the stand-in was reset: the test is over
        answer: int | None
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.post(cb.url, content=urlencode(cb.params), headers=cb.headers)
            answer = r.status_code
        except httpx.HTTPError:
            answer = None
        with self._lock:
            self._deliveries.append(Delivery(sid, status, answer))
