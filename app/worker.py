"""`talkstack-worker`: run the background jobs in their own process, until SIGTERM or SIGINT.

For deployments that set RUN_JOBS_IN_PROCESS=false on the API processes (or want more job
throughput): any number of these can share one database.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from app.config import Settings, get_settings
from app.main import open_context
from app.tasks import running_worker

log = logging.getLogger("talkstack.jobs")


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(settings))


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Work until `stop` is set, or a signal arrives; then stop gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with open_context(settings) as ctx, running_worker(ctx) as worker:
            ctx.worker = worker
            await stop.wait()
            log.info("stopping: finishing the jobs in hand")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
