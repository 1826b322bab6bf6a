"""JobWorker: polls the jobs table, runs each job's handler, settles the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import timedelta

from app.db import utcnow
from app.errors import NotConfigured
from app.jobs import queue
from app.jobs.queue import Sessionmaker
from app.models import Job

log = logging.getLogger("talkstack.jobs")

# A handler may also have `async def reaped(job)`: called when a job of its kind is buried
# because its worker died during the last attempt (so the handler never saw how it ended).
Handler = Callable[[Job], Awaitable[None]]


class RetryLater(Exception):
    """Raised by a handler: try again in `delay` seconds (None: the worker's backoff)."""

    def __init__(self, delay: float | None, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class PermanentFailure(Exception):
    """Raised by a handler: retrying cannot help; the job is dead at once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobWorker:
    """Runs due jobs of the kinds it has handlers for, `concurrency` at a time.

    Jobs of an `ordered_kinds` kind that belong to one project run one after another in claim
    order (webhook events reach the receiver in the order they happened, when none fails).
    That order holds within one worker; several workers only keep it roughly.
    """

    def __init__(
        self,
        sessionmaker: Sessionmaker,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int = 8,
        poll_interval: float = 1.0,
        lease_seconds: float = 60.0,
        retry_base_seconds: float = 10.0,
        retry_max_seconds: float = 3600.0,
        shutdown_grace_seconds: float = 10.0,
        retention_seconds: float = 7 * 24 * 3600,
        ordered_kinds: Collection[str] = (),
        housekeeping: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._sessionmaker = sessionmaker
        self._handlers = dict(handlers)
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._lease_seconds = lease_seconds
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._grace = shutdown_grace_seconds
        self._retention = retention_seconds
        self._ordered = frozenset(ordered_kinds)
        # Clean-up of the application's own (expired rows...), run with the queue's own.
        self._housekeeping = tuple(housekeeping)
        # Claimed and not yet settled (running, or waiting in a lane behind a running job).
        self._held: dict[uuid.UUID, Job] = {}
        self._lanes: dict[tuple[str, uuid.UUID], deque[Job]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self._poller is not None and not self._stopping

    async def start(self) -> None:
        if self._poller is not None:
            return
        self._loop = asyncio.get_running_loop()
        engine = self._sessionmaker.kw.get("bind")
        if engine is not None:
            self._unsubscribe = queue.wake_on_commit(engine, self.notify)
        self._poller = asyncio.create_task(self._poll_forever(), name="jobs-poller")
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="jobs-heartbeat")
        log.info(
            "job worker started: kinds %s, concurrency %d",
            ", ".join(sorted(self._handlers)),
            self._concurrency,
        )

    def notify(self) -> None:
        """Wake the poller now (a job was just committed) instead of at the next poll."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop claiming; let running jobs finish for the grace period, then hand them back."""
        if self._poller is None or self._stopping:
            return
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._wake.set()
        await self._poller
        # Jobs waiting in a lane have not started: give them back at once. A snapshot: each
        # release awaits, and a lane whose running job ends meanwhile removes itself.
        for lane in list(self._lanes.values()):
            while lane:
                await self._release(lane.popleft())
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        log.info("job worker stopped")

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_reap = 0.0
        while not self._stopping:
            self._wake.clear()
            full = False
            try:
                if loop.time() >= next_reap:
                    await self._reap()
                    next_reap = loop.time() + max(self._lease_seconds, self._poll_interval)
                free = self._concurrency - len(self._held)
                if free > 0:
                    jobs = await queue.claim(
                        self._sessionmaker,
                        limit=free,
                        lease_seconds=self._lease_seconds,
                        kinds=self._handlers.keys(),
                    )
                    for job in jobs:
                        self._dispatch(job)
                    full = len(jobs) == free
            except Exception:
                log.exception("claiming jobs failed; trying again in %s s", self._poll_interval)
            if full or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    def _dispatch(self, job: Job) -> None:
        self._held[job.id] = job
        if job.kind in self._ordered and job.project_id is not None:
            key = (job.kind, job.project_id)
            if key in self._lanes:
                self._lanes[key].append(job)
                return
            self._lanes[key] = deque()
            self._spawn(self._run_lane(key, job))
        else:
            self._spawn(self._run(job))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_lane(self, key: tuple[str, uuid.UUID], job: Job) -> None:
        lane = self._lanes[key]
        try:
            while True:
                await self._run(job)
                if not lane:
                    return
                job = lane.popleft()
        finally:
            del self._lanes[key]

    async def _run(self, job: Job) -> None:
        try:
            await self._handlers[job.kind](job)
        except asyncio.CancelledError:
            await self._release(job)
            raise
        except RetryLater as exc:
            await self._failed(job, exc.reason, exc.delay)
        except PermanentFailure as exc:
            await self._bury(job, exc.reason)
        except NotConfigured as exc:
            # The outside system it needs (Twilio...) is not configured here: nothing to do,
            # and nothing a retry would change.
            log.info("job %s (%s) skipped: %s", job.id, job.kind, exc.message)
            await self._settle(queue.complete(self._sessionmaker, job), job)
        except Exception as exc:
            log.warning(
                "job %s (%s) attempt %d failed", job.id, job.kind, job.attempts, exc_info=True
            )
            await self._failed(job, f"{type(exc).__name__}: {exc}", None)
        else:
            await self._settle(queue.complete(self._sessionmaker, job), job)
        finally:
            self._held.pop(job.id, None)
            self._wake.set()

    async def _failed(self, job: Job, reason: str, delay: float | None) -> None:
        if job.attempts >= job.max_attempts:
            await self._bury(job, reason)
            return
        if delay is None:
            delay = queue.backoff(job.attempts, base=self._retry_base, cap=self._retry_max)
        log.info(
            "job %s (%s) attempt %d of %d failed (%s); next try in %.1f s",
            job.id,
            job.kind,
            job.attempts,
            job.max_attempts,
            reason,
            delay,
        )
        await self._settle(queue.retry(self._sessionmaker, job, reason, delay), job)

    async def _bury(self, job: Job, reason: str) -> None:
        if await self._settle(queue.bury(self._sessionmaker, job, reason), job):
            _log_dead(job, reason)

    async def _release(self, job: Job) -> None:
        await self._settle(queue.release(self._sessionmaker, job), job)
        self._held.pop(job.id, None)

    async def _settle(self, settling: Awaitable[bool], job: Job) -> bool:
        try:
            return await settling
        except Exception:
            # The lease runs out and the job runs again: at least once, never lost.
            log.exception("job %s (%s): recording the outcome failed", job.id, job.kind)
            return False

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                await queue.extend(
                    self._sessionmaker, list(self._held.values()), self._lease_seconds
                )
            except Exception:
                log.exception("renewing job leases failed")

    async def _reap(self) -> None:
        for job in await queue.reap(self._sessionmaker):
            _log_dead(job, job.last_error or "")
            hook = getattr(self._handlers.get(job.kind), "reaped", None)
            if hook is not None:
                try:
                    await hook(job)
                except Exception:
                    log.exception("job %s (%s): its reaped hook failed", job.id, job.kind)
        await queue.purge_done(
            self._sessionmaker, older_than=utcnow() - timedelta(seconds=self._retention)
        )
        for chore in self._housekeeping:
            try:
                await chore()
            except Exception:
                log.exception("housekeeping (%r) failed", chore)


def _log_dead(job: Job, reason: str) -> None:
    log.error("job %s (%s) is dead after %d attempt(s): %s", job.id, job.kind, job.attempts, reason)
