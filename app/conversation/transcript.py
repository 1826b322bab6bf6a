"""Saving a live call's transcript while the conversation goes on, and once more when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import or_, update

from app.call import lifecycle
from app.context import AppContext
from app.conversation import voicemail
from app.conversation.session import Conversation
from app.models import Call

log = logging.getLogger("talkstack.conversation.transcript")

# A live call's transcript is written at most this often: each turn's write is a statement
# carrying the whole transcript, and a quick callee takes a turn every few hundred
# milliseconds (bench/conversation_bench.py: about a third of a turn's CPU at 50 such calls).
# A crash loses at most this much of a transcript; the end of a call is always written.
SAVE_EVERY_SECONDS = 1.0

# Once a voicemail message is in the transcript, only `finish` (which keeps it) writes it.
_NO_MESSAGE_LEFT = or_(Call.ended_reason.is_(None), Call.ended_reason != voicemail.ENDED_REASON)


class TranscriptSaver:
    """Saves the transcript during the call, off the conversation's critical path.

    `later` is called after each turn: a change is written at once unless a write was made
    less than `every` seconds (SAVE_EVERY_SECONDS) ago; then the changes wait for the end of
    that interval and go in one statement, with the transcript as it is then. `finish` drops
    a waiting write, then writes the final transcript and the outcome. What is written is
    `earlier` (an earlier session's transcript) followed by this session's.
    """

    def __init__(
        self,
        ctx: AppContext,
        call_id: uuid.UUID,
        earlier: list[dict[str, Any]] | None = None,
        *,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._call_id = call_id
        self._earlier = _snapshot(earlier or [])
        self._every = SAVE_EVERY_SECONDS if every is None else every
        self._clock = clock
        self._lock = asyncio.Lock()
        self._transcript: list[dict[str, Any]] | None = None
        self._last_write = -float("inf")
        self._pending: asyncio.Task[None] | None = None

    async def later(self, transcript: list[dict[str, Any]]) -> None:
        # The conversation's own list: what is written is a copy of it at the write.
        self._transcript = transcript
        if self._pending is None:
            wait = self._last_write + self._every - self._clock()
            self._pending = asyncio.create_task(self._write_after(wait))

    async def _write_after(self, wait: float) -> None:
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            async with self._lock:
                self._pending = None  # a change from now on needs a write of its own
                self._last_write = self._clock()
                assert self._transcript is not None
                transcript = self._earlier + _snapshot(self._transcript)
                try:
                    # A Core statement on a pooled connection: no ORM session per write.
                    async with self._ctx.engine.begin() as conn:
                        await conn.execute(
                            update(Call)
                            .where(Call.id == self._call_id, _NO_MESSAGE_LEFT)
                            .values(transcript=transcript)
                        )
                except Exception:
                    log.exception("saving the transcript of call %s failed", self._call_id)
        finally:
            if self._pending is asyncio.current_task():
                self._pending = None

    async def finish(self, conversation: Conversation) -> None:
        # A write still waiting is dropped: the final one has it all. One under way holds
        # the lock until it is done.
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        async with self._lock, self._ctx.sessionmaker() as session, session.begin():
            call = await session.get(Call, self._call_id, with_for_update=True)
            if call is None:
                return
            transcript = self._earlier + copy.deepcopy(conversation.transcript)
            # What others wrote meanwhile stays last: a voicemail message left (it replaced
            # this session), or a warm transfer's failure that came before this write (the
            # callee may already be back with the agent: the end is no longer this session's).
            others = _written_by_others(call.transcript[len(self._earlier) :])
            transcript += others
            call.transcript = transcript
            reason = conversation.ended_reason
            if any(turn.get("transferFailed") for turn in others):
                reason = None
            await lifecycle.conversation_ended(session, call, reason)


def _written_by_others(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns that others than a relay session write while it runs, which its final
    transcript must keep: a voicemail message, a failed warm transfer."""
    return [turn for turn in stored if turn.get("voicemail") or turn.get("transferFailed")]


def _snapshot(transcript: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of the transcript as it is now. The conversation changes a turn only by
    assigning its keys (an interrupted turn's text), never by changing a value in place, so
    copying each turn's dict is enough, at a fraction of `copy.deepcopy`'s cost."""
    return [dict(turn) for turn in transcript]
