"""Applying Twilio's status, recording and answering-machine callbacks to a call."""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.call import lifecycle
from app.call import status as states
from app.call.schemas import CallOut
from app.call.status import CallStatus
from app.db import utcnow
from app.hubspot import jobs as hubspot_jobs
from app.integrations.webhooks import sender as webhooks
from app.jobs.queue import enqueue_many
from app.models import Call, Project
from app.models.call import AnalysisState

log = logging.getLogger("talkstack.call.callbacks")


def _when(params: Mapping[str, str]) -> datetime:
    try:
        return parsedate_to_datetime(params["Timestamp"])
    except (KeyError, TypeError, ValueError):
        return utcnow()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def same_call(call_sid: str | None, sid: str | None) -> bool:
    """Whether a callback naming Call SID `sid` is about the call stored with `call_sid` (a
    callback can beat place_call to storing the SID)."""
    return call_sid is None or not sid or sid == call_sid


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What one status callback does to a call."""

    values: dict[str, Any]  # the columns to write; empty: nothing changes
    changed: bool  # the status moved: the project's webhook hears about it
    completed: bool  # Twilio says completed: its price is to be fetched
    analyse: bool = False  # final, its conversation over: the analysis job is to be queued


def status_update(
    *,
    sid: str | None,
    status: str,
    last_sequence: int,
    answered_by: str | None,
    ended_reason: str | None,
    analysis_state: str | None,
    params: Mapping[str, str],
) -> StatusUpdate:
    """The changes a status callback makes to a call in this state: forward only, in
    SequenceNumber order (a late or repeated callback changes nothing)."""
    values: dict[str, Any] = {}
    sequence = _int(params.get("SequenceNumber"))
    if sequence is not None:
        if sequence <= last_sequence:
            log.info("call %s: late or repeated callback #%s ignored", sid, sequence)
            return StatusUpdate(values, changed=False, completed=False)
        values["last_sequence"] = sequence
    new = params.get("CallStatus", "")
    if not states.advances(status, new):
        return StatusUpdate(values, changed=False, completed=False)
    when = _when(params)
    values["status"] = states.final_status(new, answered_by, ended_reason)
    if new == CallStatus.IN_PROGRESS:
        values["answered_at"] = when
    analyse = False
    if new in states.FINAL:
        values["ended_at"] = when
        values["seconds"] = _int(params.get("CallDuration")) or 0
        values["ended_reason"] = ended_reason or new
        if analysis_state == AnalysisState.WAITING:
            values["analysis_state"] = AnalysisState.QUEUED
            analyse = True
    # Twilio prices a call after it ends, sometimes minutes later: ask for it then.
    return StatusUpdate(
        values, changed=True, completed=new == CallStatus.COMPLETED, analyse=analyse
    )


async def load_for_callback(
    session: AsyncSession, call_id: uuid.UUID, params: Mapping[str, str]
) -> Call | None:
    """The call a Twilio callback is about, locked; None (logged) when it is unknown or the
    callback names another Call SID."""
    call = await session.get(Call, call_id, with_for_update=True)
    sid = params.get("CallSid")
    if call is None or not same_call(call.call_sid, sid):
        log.warning("Twilio callback for unknown call %s (CallSid %s) ignored", call_id, sid)
        return None
    if call.call_sid is None and sid:
        call.call_sid = sid  # the callback beat place_call to storing the SID
    return call


async def apply_status(session: AsyncSession, call: Call, params: Mapping[str, str]) -> bool:
    """Apply one status callback to a loaded call; return whether the call's status changed."""
    change = status_update(
        sid=call.call_sid,
        status=call.status,
        last_sequence=call.last_sequence,
        answered_by=call.answered_by,
        ended_reason=call.ended_reason,
        analysis_state=call.analysis_state,
        params=params,
    )
    for column, value in change.values.items():
        setattr(call, column, value)
    await lifecycle.status_applied(
        session, call, changed=change.changed, completed=change.completed, analyse=change.analyse
    )
    return change.changed


_CALLS = cast(Table, Call.__table__)
_PROJECTS = cast(Table, Project.__table__)
# Built once: Twilio's status callbacks are the app's busiest request.
_LOCK_CALLS = (
    select(_CALLS)
    .where(_CALLS.c.id.in_(bindparam("call_ids", expanding=True)))
    .order_by(_CALLS.c.id)  # every writer locks in the same order: no deadlock between them
    .with_for_update()
)
_UPDATE_CALL = update(_CALLS).where(_CALLS.c.id == bindparam("call_id"))
_WITH_WEBHOOK = select(_PROJECTS.c.id).where(
    _PROJECTS.c.id.in_(bindparam("project_ids", expanding=True)),
    _PROJECTS.c.call_status_webhook.is_not(None),
    _PROJECTS.c.call_status_webhook != "",
)


@dataclass(slots=True)
class _Callback:
    call_id: uuid.UUID
    params: Mapping[str, str]
    done: asyncio.Future[bool]


class StatusIngest:
    """Twilio's status callbacks, written in batches: the callbacks that arrive while one batch
    is being written make up the next, and a batch is one transaction whatever its size (one
    SELECT ... FOR UPDATE of its calls, an UPDATE per changed call sent as one executemany, one
    INSERT of its jobs, one COMMIT). Each callback is answered once its batch has committed.

    What a callback does is exactly apply_status (the same status_update): forward only, in
    SequenceNumber order, each status change queuing its webhook event (and a completed call
    its price fetch) in the transaction that stores it. Callbacks for one call are applied in
    the order they arrived. A batch that fails is written again one callback per transaction,
    so one bad callback fails alone.

    One batch is written at a time. More at once did not help on PostgreSQL (smaller batches,
    more CPU per callback, and the database needs the same cores) and cannot on SQLite (one
    writer at a time).
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], max_batch: int = 64):
        # Weakly: status_ingest() keeps one StatusIngest per sessionmaker in a
        # WeakKeyDictionary, whose values must not keep their keys alive.
        self._sessionmaker = weakref.ref(sessionmaker)
        self._max_batch = max_batch
        self._waiting: list[_Callback] = []
        self._writer: asyncio.Task[None] | None = None

    async def apply(self, call_id: uuid.UUID, params: Mapping[str, str]) -> bool:
        """Apply one status callback; return whether the call's status changed."""
        callback = _Callback(call_id, params, asyncio.get_running_loop().create_future())
        self._waiting.append(callback)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_waiting())
        return await callback.done

    async def _write_waiting(self) -> None:
        batch: list[_Callback] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._write(batch)
        except BaseException:
            # Only when this task itself is cancelled (the loop is closing): nobody waits forever.
            for callback in batch:
                _settle(callback, RuntimeError("status callback not written"))
            raise
        finally:
            # No await between finding the queue empty and this: a callback queued from now on
            # starts the next writer.
            self._writer = None

    async def _write(self, batch: list[_Callback]) -> None:
        try:
            results = await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            log.warning("a batch of %d status callbacks failed (%r); one by one", len(batch), exc)
            for callback in batch:
                try:
                    alone = await self._transaction([callback])
                except Exception as one:
                    _settle(callback, one)
                else:
                    _settle(callback, alone[0])
            return
        for callback, changed in zip(batch, results, strict=True):
            _settle(callback, changed)

    async def _transaction(self, batch: list[_Callback]) -> list[bool]:
        sessionmaker = self._sessionmaker()
        if sessionmaker is None:
            raise RuntimeError("the app context of these status callbacks is gone")
        async with sessionmaker() as session:
            ids = list(dict.fromkeys(callback.call_id for callback in batch))
            locked = await session.execute(_LOCK_CALLS, {"call_ids": ids})
            calls = {row.id: row._asdict() for row in locked}
            results: list[bool] = []
            writes: dict[uuid.UUID, dict[str, Any]] = {}  # per call, the columns changed
            events: list[tuple[uuid.UUID, Call]] = []  # (project, the call right after)
            snapshots: list[Call] = []  # every call changed, as it now is
            jobs: list[dict[str, Any]] = []
            for callback in batch:
                call = calls.get(callback.call_id)
                sid = callback.params.get("CallSid")
                if call is None or not same_call(call["call_sid"], sid):
                    log.warning(
                        "Twilio callback for unknown call %s (CallSid %s) ignored",
                        callback.call_id,
                        sid,
                    )
                    results.append(False)
                    continue
                change = status_update(
                    sid=call["call_sid"] or sid,
                    status=call["status"],
                    last_sequence=call["last_sequence"],
                    answered_by=call["answered_by"],
                    ended_reason=call["ended_reason"],
                    analysis_state=call["analysis_state"],
                    params=callback.params,
                )
                values = change.values
                if call["call_sid"] is None and sid:
                    values["call_sid"] = sid  # the callback beat place_call to storing the SID
                call.update(values)
                writes.setdefault(callback.call_id, {}).update(values)
                jobs += lifecycle.jobs_after_status(
                    call_id=callback.call_id,
                    project_id=call["project_id"],
                    batch_id=call["batch_id"],
                    status=call["status"],
                    transfer_sid=call["transfer_call_sid"],
                    transfer_status=call["transfer_status"],
                    changed=change.changed,
                    completed=change.completed,
                    analyse=change.analyse,
                )
                if change.changed:
                    # The call as it is now, for its event: read-only, so a plain namespace of
                    # its columns (building an ORM Call costs more than the whole UPDATE).
                    snapshot = cast(Call, SimpleNamespace(**call))
                    events.append((call["project_id"], snapshot))
                    snapshots.append(snapshot)
                results.append(change.changed)
            await self._store(session, writes, events, jobs)
            for snapshot in snapshots:
                await lifecycle.final_sync(session, snapshot)
            await session.commit()
        return results

    @staticmethod
    async def _store(
        session: AsyncSession,
        writes: dict[uuid.UUID, dict[str, Any]],
        events: list[tuple[uuid.UUID, Call]],
        jobs: list[dict[str, Any]],
    ) -> None:
        # One executemany per set of changed columns: only what changed is written.
        now = utcnow()
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for call_id, values in writes.items():
            if values:
                rows = by_columns.setdefault(frozenset(values), [])
                rows.append({"call_id": call_id, **values, "updated_at": now})
        for rows in by_columns.values():
            await session.execute(_UPDATE_CALL, rows)
        deliveries: list[dict[str, Any]] = []
        if events:
            # The project is read only when an event is due, once per batch.
            project_ids = list(dict.fromkeys(project_id for project_id, _ in events))
            hooked = set((await session.scalars(_WITH_WEBHOOK, {"project_ids": project_ids})).all())
            for project_id, snapshot in events:
                if project_id in hooked:
                    job, delivery = webhooks.call_event_rows(
                        project_id, "call.status", CallOut.of(snapshot).public()
                    )
                    jobs.append(job)
                    deliveries.append(delivery)
        await webhooks.insert_deliveries(session, deliveries)
        await enqueue_many(session, jobs)


def _settle(callback: _Callback, outcome: bool | BaseException) -> None:
    if callback.done.done():  # its request was cancelled (Twilio hung up): nobody to answer
        return
    if isinstance(outcome, BaseException):
        callback.done.set_exception(outcome)
    else:
        callback.done.set_result(outcome)


_ingests: weakref.WeakKeyDictionary[async_sessionmaker[AsyncSession], StatusIngest] = (
    weakref.WeakKeyDictionary()
)


def status_ingest(sessionmaker: async_sessionmaker[AsyncSession]) -> StatusIngest:
    """The batch writer of status callbacks for this sessionmaker (one per app context)."""
    ingest = _ingests.get(sessionmaker)
    if ingest is None:
        ingest = _ingests[sessionmaker] = StatusIngest(sessionmaker)
    return ingest


async def apply_amd(session: AsyncSession, call: Call, params: Mapping[str, str]) -> bool:
    answered_by = params.get("AnsweredBy") or None
    if answered_by is None:
        return False
    call.answered_by = answered_by
    refined = states.final_status(call.status, answered_by)
    if refined != call.status:
        call.status = refined
        await lifecycle.status_refined(session, call)
        return True
    return False


async def apply_recording(session: AsyncSession, call: Call, params: Mapping[str, str]) -> None:
    """Store a finished recording's URL (`call` is locked by the caller)."""
    if params.get("RecordingStatus", "completed") != "completed":
        return
    url = params.get("RecordingUrl")
    if not url:
        return
    # Twilio sends the recording's URL without an extension; .mp3 is what people can play.
    if not url.rsplit("/", 1)[-1].count("."):
        url += ".mp3"
    if url in call.recording_urls:
        return
    call.recording_urls = [*call.recording_urls, url]
    # Twilio usually sends the recording after the final status: if HubSpot's sync has read
    # the call already, the engagement it logged lacks the recording; sync again (an update).
    if call.hubspot_read_at is not None and call.status in states.FINAL:
        await hubspot_jobs.call_finished(session, call)
