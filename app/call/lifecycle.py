"""The life of a call, in one place: where a call is created (outbound, batch, inbound) and
what follows when its status changes.

Created: `outbound` (POST /call, app/call/service.py; a batch row's call, app/batch/dialer.py)
and `inbound` (Twilio's inbound webhook, app/conversation/inbound.py) build the row;
`placed` records Twilio's Call SID of an outbound call, `refused` a call Twilio would not place;
`answered_inbound` does what follows an inbound call's creation. Each call placed or answered
gets its final check (`schedule_check`): a call never stays live because a callback was lost.

Changed: `status_applied` is what follows one applied status callback (callbacks.apply_status,
one call in an ORM session): the jobs of `jobs_after_status` (the price of a completed call, a
batch call's outcome, the end of a warm transfer's human leg the callee left), the project's
webhook event (events.call_changed) and HubSpot's sync (`final_sync`). The hot path,
callbacks.StatusIngest (many calls in one Core transaction), takes the same jobs and sync from
here and writes the webhook events of a batch in one statement. `status_refined` follows our
own refinement of a final status (`voicemail`, from a late answering-machine verdict).

Ended: `conversation_ended` is what follows a relay session's end, once its final transcript
is stored (app/conversation/transcript.py): the reason it ended, the status that reason refines
(`silence`), and the analysis of a conversation (app/call/analysis.py). The analysis needs both
the conversation's end and the call's final status; whichever comes second queues it, in its
transaction (`Call.analysis_state` says the first has come), so it runs once, at once, and a
crash between the two loses nothing.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.call import status as states
from app.call.analysis import ANALYZE_JOB, has_conversation
from app.call.events import call_changed
from app.call.status import CallStatus
from app.db import utcnow
from app.errors import AppError
from app.hubspot import jobs as hubspot_jobs
from app.integrations.twilio.errors import TwilioRejected
from app.jobs.queue import enqueue, enqueue_many, job_row
from app.models import Agent, Call
from app.models.call import AnalysisState

ANALYZE_ATTEMPTS = 8
PRICE_JOB = "call.price"
PRICE_ATTEMPTS = 8
# Hang up a warm transfer's call to the human: the callee it was for is gone.
END_LEG_JOB = "call.end_transfer_leg"
END_LEG_ATTEMPTS = 6
# A batch call's outcome (app/batch/outcome.py decides it).
OUTCOME_JOB = "batch.outcome"
OUTCOME_ATTEMPTS = 10
# Twilio's answering-machine verdict can come after a call's end: a `completed` batch call's
# outcome waits this long (`voicemail` may be retried when `completed` is not).
AMD_GRACE = timedelta(seconds=60)


CHECK_JOB = "call.check"
CHECK_ATTEMPTS = 12
# How long Twilio rings before giving up (calls.create's Timeout, left at its default).
RING_SECONDS = 60
# How long after a call must have ended its final status callback has to have come.
CHECK_GRACE = timedelta(minutes=5)


async def schedule_check(session: AsyncSession, call: Call, *, max_seconds: int) -> None:
    """Queue, in the caller's transaction, a look at Twilio's record of `call` once it must
    have ended (ringing, then at most `max_seconds` of talk, then a grace period). A final
    status callback that never arrived (lost, or sent while this server was down) is then
    applied from that record, as the callback would have been (call/jobs.py check_call): the
    call does not stay live forever, and its webhook, price and analysis follow."""
    await enqueue(
        session,
        kind=CHECK_JOB,
        payload={"call_id": str(call.id)},
        project_id=call.project_id,
        run_at=utcnow() + timedelta(seconds=RING_SECONDS + max_seconds) + CHECK_GRACE,
        max_attempts=CHECK_ATTEMPTS,
    )


# -- created ------------------------------------------------------------------------------------


def outbound(
    *,
    user_id: uuid.UUID,
    project_id: uuid.UUID,
    agent: Agent,
    to: str,
    from_: str,
    variables: dict[str, Any],
    system_instruction: str,
    first_message: str | None,
    batch_id: uuid.UUID | None = None,
    hubspot_contact_id: str | None = None,
) -> Call:
    """A call we are about to place (queued until Twilio says more)."""
    return Call(
        user_id=user_id,
        project_id=project_id,
        agent_id=agent.id,
        batch_id=batch_id,
        hubspot_contact_id=hubspot_contact_id,
        direction="outbound",
        to_number=to,
        from_number=from_,
        status=CallStatus.QUEUED,
        dynamic_variables=variables,
        system_instruction=system_instruction,
        first_message=first_message,
    )


async def placed(session: AsyncSession, call: Call, sid: str, agent: Agent) -> None:
    """Twilio placed the outbound call: its Call SID, and its final check."""
    call.call_sid = sid
    await schedule_check(session, call, max_seconds=agent.max_call_duration_seconds)


def inbound(
    *,
    sid: str,
    user_id: uuid.UUID,
    project_id: uuid.UUID,
    agent: Agent,
    to: str,
    caller: str,
    status: str,
    variables: dict[str, Any],
    system_instruction: str,
    first_message: str | None,
) -> Call:
    """A call to one of our numbers, which its agent answers."""
    return Call(
        call_sid=sid,
        user_id=user_id,
        project_id=project_id,
        agent_id=agent.id,
        direction="inbound",
        to_number=to,
        from_number=caller,
        status=status,
        dynamic_variables=variables,
        system_instruction=system_instruction,
        first_message=first_message,
    )


async def answered_inbound(session: AsyncSession, call: Call, agent: Agent) -> None:
    """An inbound call was stored: the project's webhook hears of it; its final check."""
    await call_changed(session, call)
    await schedule_check(session, call, max_seconds=agent.max_call_duration_seconds)


async def refused(session: AsyncSession, call: Call, exc: AppError) -> None:
    """Twilio did not place `call` (refused, or failed answering): the call failed, with
    Twilio's reason, and the project's webhook hears so. Single calls and batch rows alike."""
    call.status = CallStatus.FAILED
    call.ended_at = utcnow()
    call.ended_reason = "twilio-rejected" if isinstance(exc, TwilioRejected) else "twilio-error"
    twilio_code = exc.extra.get("twilioCode")
    call.error_code = str(twilio_code) if twilio_code is not None else exc.code
    call.error_message = exc.message
    await call_changed(session, call)


# -- changed ------------------------------------------------------------------------------------


def _call_job(
    kind: str, call_id: uuid.UUID, project_id: uuid.UUID, attempts: int
) -> dict[str, Any]:
    """The row of a job about one call (its payload: the call's id)."""
    return job_row(
        kind=kind, payload={"call_id": str(call_id)}, project_id=project_id, max_attempts=attempts
    )


def analysis_job(call_id: uuid.UUID, project_id: uuid.UUID) -> dict[str, Any]:
    return _call_job(ANALYZE_JOB, call_id, project_id, ANALYZE_ATTEMPTS)


def price_job(call_id: uuid.UUID, project_id: uuid.UUID) -> dict[str, Any]:
    return _call_job(PRICE_JOB, call_id, project_id, PRICE_ATTEMPTS)


def outcome_job(call_id: uuid.UUID, project_id: uuid.UUID, status: str) -> dict[str, Any]:
    """The job row deciding a batch call's outcome: `status` is its new final status."""
    row = _call_job(OUTCOME_JOB, call_id, project_id, OUTCOME_ATTEMPTS)
    if status == CallStatus.COMPLETED:
        row["next_attempt_at"] = row["next_attempt_at"] + AMD_GRACE
    return row


def end_leg_job(call_id: uuid.UUID, project_id: uuid.UUID) -> dict[str, Any]:
    return _call_job(END_LEG_JOB, call_id, project_id, END_LEG_ATTEMPTS)


def ends_batch_call(batch_id: uuid.UUID | None, changed: bool, status: str) -> bool:
    """Whether a status change gives a batch call its final status (no query: the hot path)."""
    return changed and batch_id is not None and status in states.FINAL


def leaves_human_waiting(
    status: str, transfer_sid: str | None, transfer_status: str | None
) -> bool:
    """Whether a call in `status` has left a warm transfer's human leg behind: the callee's
    call is over while the human's is not (ringing, or hearing the briefing)."""
    return (
        status in states.FINAL
        and transfer_sid is not None
        and (transfer_status or CallStatus.QUEUED) not in states.FINAL
    )


def jobs_after_status(
    *,
    call_id: uuid.UUID,
    project_id: uuid.UUID,
    batch_id: uuid.UUID | None,
    status: str,
    transfer_sid: str | None,
    transfer_status: str | None,
    changed: bool,
    completed: bool,
    analyse: bool = False,
) -> list[dict[str, Any]]:
    """The jobs one applied status callback queues, in its transaction (`status` is the
    call's status after it; `completed`: Twilio said completed, the price is to be fetched;
    `analyse`: the status is final and the conversation over, the analysis is due)."""
    jobs: list[dict[str, Any]] = []
    if analyse:
        jobs.append(analysis_job(call_id, project_id))
    if completed:
        # Twilio prices a call after it ends, sometimes minutes later.
        jobs.append(price_job(call_id, project_id))
    if ends_batch_call(batch_id, changed, status):
        jobs.append(outcome_job(call_id, project_id, status))
    if changed and leaves_human_waiting(status, transfer_sid, transfer_status):
        jobs.append(end_leg_job(call_id, project_id))
    return jobs


async def status_refined(session: AsyncSession, call: Call) -> None:
    """What follows our refinement of a final status (`voicemail` from Twilio's late answering
    machine verdict): a batch call's outcome is decided again; the project's webhook hears."""
    if ends_batch_call(call.batch_id, True, call.status):
        await enqueue_many(session, [outcome_job(call.id, call.project_id, call.status)])
    await call_changed(session, call)


async def final_sync(session: AsyncSession, call: Call) -> None:
    """A final call goes to HubSpot now; one with a conversation goes after its analysis, with
    the summary (app/call/analysis.py)."""
    if call.status in states.FINAL and not has_conversation(call.transcript):
        await hubspot_jobs.call_finished(session, call)


async def status_applied(
    session: AsyncSession, call: Call, *, changed: bool, completed: bool, analyse: bool = False
) -> None:
    """What follows one status callback applied to `call` (loaded in `session`)."""
    jobs = jobs_after_status(
        call_id=call.id,
        project_id=call.project_id,
        batch_id=call.batch_id,
        status=call.status,
        transfer_sid=call.transfer_call_sid,
        transfer_status=call.transfer_status,
        changed=changed,
        completed=completed,
        analyse=analyse,
    )
    await enqueue_many(session, jobs)
    if changed:
        await call_changed(session, call)
        await final_sync(session, call)


async def conversation_ended(session: AsyncSession, call: Call, reason: str | None) -> None:
    """What follows a relay session's end, its final transcript stored on `call` (locked in
    `session`); `reason`: why the session ended, None when it is not for it to say (a failed
    warm transfer took the callee back to the agent meanwhile)."""
    if reason is not None:
        call.ended_reason = reason
        refined = states.final_status(call.status, call.answered_by, reason)
        if refined != call.status:
            call.status = refined
            await call_changed(session, call)
    if not has_conversation(call.transcript):
        return
    if call.status in states.FINAL:
        # The final status came first (or this is a later session's end): analyse it now.
        call.analysis_state = AnalysisState.QUEUED
        await enqueue_many(session, [analysis_job(call.id, call.project_id)])
    elif call.analysis_state is None:
        # Twilio's final status follows within seconds and queues it (callbacks.status_update).
        call.analysis_state = AnalysisState.WAITING
