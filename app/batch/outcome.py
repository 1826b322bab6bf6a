"""A batch call's outcome: the row's final outcome, or the row queued again for a new call.

A `batch.outcome` job is queued in the transaction that gives a batch call its final status
(Twilio's status callback, the `call.check` recovery of a lost one, or the AMD verdict that
turns `completed` into `voicemail`). A `completed` call's job waits AMD_GRACE first: Twilio's
answering-machine verdict can come after the call's end, and `voicemail` may be retried when
`completed` is not.

The job is idempotent (jobs run at least once): it acts only on the row whose current call is
this call, and a row queued again has no call until its next claim, which makes a new one.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from app.batch import lifecycle
from app.batch.campaign import load_retry
from app.batch.lifecycle import RowState
from app.call.status import FINAL
from app.db import utcnow
from app.models import Batch, BatchRow, BatchStatus, Call, Job

if TYPE_CHECKING:
    from app.context import AppContext

log = logging.getLogger("talkstack.batch.outcome")


async def decide(ctx: AppContext, job: Job) -> None:
    call_id = uuid.UUID(job.payload["call_id"])
    now = utcnow()
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id)
        if call is None or call.batch_id is None or call.status not in FINAL:
            return
        batch = await session.get(Batch, call.batch_id, with_for_update=True)
        row = (
            await session.execute(
                select(BatchRow)
                .where(BatchRow.call_id == call.id, BatchRow.batch_id == call.batch_id)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if batch is None or row is None:
            return  # an earlier attempt's call: its row has moved on to a new call
        if row.state == RowState.DIALING:
            # The call ended before the dialer settled its claim: settling it (`dialed`, in
            # app/batch/dialer.py) queues this decision again.
            return
        status = call.status
        if row.state != RowState.DIALED or row.outcome == status:
            return
        rule = load_retry(batch.retry).get(status)
        if (
            rule is not None
            and row.call_attempts < rule.attempts
            and batch.status in lifecycle.OPEN
        ):
            at = now + timedelta(seconds=rule.delay_seconds)
            # The next claim makes a new call: the row keeps no call (a claim of a row with a
            # call adopts that call instead of dialing). This call stays, linked by batch_id.
            row.state, row.call_id, row.call_sid = RowState.QUEUED, None, None
            row.attempts, row.claimed_at, row.error = 0, None, None
            row.next_attempt_at = at
            row.outcome = status  # the last call's, shown again only if the row is canceled
            log.info(
                "batch row %s: %s after call %d of %d; calling again at %s",
                row.id, status, row.call_attempts, rule.attempts, at.isoformat(),
            )  # fmt: skip
            if batch.status == BatchStatus.RUNNING:
                await lifecycle.wake_dialer(session, batch, at)
            return
        row.outcome = status
        await lifecycle.finish_if_done(session, batch, now)
