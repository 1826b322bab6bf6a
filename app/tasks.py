"""Every job kind and its handler, in one place: a new kind of background work is added here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from functools import partial

from app.batch import outcome
from app.batch.dialer import BatchDialer, build_pacer
from app.batch.lifecycle import DIAL_JOB
from app.call import analysis
from app.call.jobs import check_call, end_transfer_leg, fetch_price
from app.call.lifecycle import CHECK_JOB, END_LEG_JOB, OUTCOME_JOB, PRICE_JOB
from app.context import AppContext
from app.conversation import transfer, voicemail
from app.db import make_engine, make_sessionmaker
from app.hubspot import jobs as hubspot_jobs
from app.integrations.webhooks import sender as webhooks
from app.jobs.queue import wake_on_commit
from app.jobs.worker import Handler, JobWorker
from app.project import deliveries

# Kinds whose jobs of one project run one at a time, in the order they were queued.
# HubSpot syncs: one project's run one at a time, which keeps it under HubSpot's rate limits
# and stops two calls to one new number from creating the contact twice.
ORDERED_KINDS = frozenset({webhooks.KIND, hubspot_jobs.SYNC_JOB})


@asynccontextmanager
async def job_handlers(ctx: AppContext) -> AsyncIterator[dict[str, Handler]]:
    """The handler of each kind, with whatever it holds open (HTTP clients) for its lifetime."""
    async with AsyncExitStack() as stack:
        deliver = webhooks.WebhookSender(ctx.sessionmaker, ctx.settings)
        stack.push_async_callback(deliver.aclose)
        pacer = build_pacer(ctx.settings)
        stack.push_async_callback(pacer.aclose)
        yield {
            webhooks.KIND: deliver,
            PRICE_JOB: partial(fetch_price, ctx),
            CHECK_JOB: partial(check_call, ctx),
            END_LEG_JOB: partial(end_transfer_leg, ctx),
            transfer.LEG_CHECK_JOB: partial(transfer.check_leg, ctx),
            analysis.ANALYZE_JOB: partial(analysis.run_analysis_job, ctx),
            voicemail.VOICEMAIL_JOB: partial(voicemail.leave_message, ctx),
            hubspot_jobs.SYNC_JOB: partial(hubspot_jobs.run_sync_job, ctx),
            DIAL_JOB: BatchDialer(ctx, pacer),
            OUTCOME_JOB: partial(outcome.decide, ctx),
        }


@asynccontextmanager
async def running_worker(ctx: AppContext) -> AsyncIterator[JobWorker]:
    """A started worker for every registered kind; stopped (gracefully) on exit."""
    settings = ctx.settings
    async with _jobs_context(ctx) as jobs_ctx, job_handlers(jobs_ctx) as handlers:
        worker = JobWorker(
            jobs_ctx.sessionmaker,
            handlers,
            concurrency=settings.job_concurrency,
            poll_interval=settings.job_poll_interval_seconds,
            lease_seconds=settings.job_lease_seconds,
            retry_base_seconds=settings.job_retry_base_seconds,
            shutdown_grace_seconds=settings.job_shutdown_grace_seconds,
            ordered_kinds=ORDERED_KINDS,
            housekeeping=[
                partial(
                    deliveries.purge_expired,
                    jobs_ctx.sessionmaker,
                    timedelta(days=settings.webhook_delivery_retention_days),
                )
            ],
        )
        await worker.start()
        # Requests enqueue through the API's engine: their commits wake this worker too.
        unsubscribe = wake_on_commit(ctx.engine, worker.notify)
        try:
            yield worker
        finally:
            unsubscribe()
            await worker.stop()


@asynccontextmanager
async def _jobs_context(ctx: AppContext) -> AsyncIterator[AppContext]:
    """The context handlers see: the same adapters, but a connection pool of their own.

    Background work (claims, leases, handlers' queries) then never takes the connections that
    requests need, and a burst of requests never starves the worker.
    """
    if ctx.engine.url.database in (None, "", ":memory:"):
        # An in-memory SQLite database exists once per engine: it cannot be shared by two.
        yield ctx
        return
    concurrency = ctx.settings.job_concurrency
    engine = make_engine(
        ctx.settings.async_database_url, pool_size=concurrency + 2, max_overflow=concurrency
    )
    try:
        yield replace(ctx, engine=engine, sessionmaker=make_sessionmaker(engine), worker=None)
    finally:
        await engine.dispose()
