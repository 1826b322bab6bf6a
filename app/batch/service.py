"""Batch calls (docs/api/batch-calls.md): validate a whole spreadsheet, store it, report on it,
pause, resume or cancel it.

Dialing is app/batch/dialer.py's job; this module only writes rows it has validated.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.batch import lifecycle
from app.batch.campaign import Campaign, retry_public
from app.batch.lifecycle import UNDECIDED, RowState
from app.batch.parse import MAX_ROWS, FileRejected
from app.call.render import missing_variables
from app.context import AppContext
from app.db import utcnow
from app.errors import AppError, BadRequest, Conflict
from app.hubspot import service as hubspot_service
from app.models import Agent, Batch, BatchRow, BatchStatus, HubSpotConnection, Project, User
from app.phone import to_e164
from app.phone_number.service import number_of_agent

INSERT_CHUNK = 1000
# The POST answer lists at most this many rejected rows; GET /call/batch-call/{id} has all.
REJECTED_IN_ANSWER = 1000
MAX_VARIABLES = 100


# Given the agent and whether the project is connected to HubSpot, the validated rows in chunks
# (parsed off the event loop by the router).
RowSource = Callable[[Agent, bool], AsyncIterator[list["Checked"]]]
HUBSPOT_PREFIX = "hubspot."


@dataclass
class Checked:
    row: int
    number: str
    variables: dict[str, str]
    error: str | None
    hubspot_contact_id: str | None = None


def _variables(cells: dict[str, str]) -> dict[str, str]:
    """Every other column, then the `dynamicVariables` JSON object over them."""
    special = ("number", "dynamicVariables", "hubspotContactId")
    out = {k: v for k, v in cells.items() if k not in special and v}
    raw = cells.get("dynamicVariables", "")
    if raw:
        try:
            given = json.loads(raw)
        except ValueError as exc:
            raise ValueError("dynamicVariables is not valid JSON") from exc
        if not isinstance(given, dict):
            raise ValueError("dynamicVariables must be a JSON object")
        for key, value in given.items():
            if isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                out[key] = str(value)
            else:
                raise ValueError(f"dynamicVariables.{key} must be a string, number or boolean")
    if len(out) > MAX_VARIABLES:
        raise ValueError(f"more than {MAX_VARIABLES} variables")
    return out


def check_rows(
    rows: Iterator[tuple[int, dict[str, str]]], agent: Agent, hubspot_connected: bool = False
) -> Generator[Checked]:
    """Each row checked as makeCall would check it. A row may name a HubSpot contact
    (`hubspotContactId`) instead of a number: its number and `hubspot.*` variables are read
    from HubSpot when it is dialed."""
    templates = [agent.system_instruction, agent.first_message, agent.voicemail_message]
    count = 0
    for line, cells in rows:
        count += 1
        if count > MAX_ROWS:
            raise FileRejected(
                f"The file has more than {MAX_ROWS:,} rows; split it into several batches.",
                code="TOO_MANY_ROWS",
            )
        raw = cells.get("number", "")
        contact = cells.get("hubspotContactId", "").strip()
        if contact and raw:
            yield Checked(line, raw[:64], {}, "give number or hubspotContactId, not both")
            continue
        if contact:
            if not hubspot_connected:
                error = "hubspotContactId needs the project connected to HubSpot"
                yield Checked(line, "", {}, error)
                continue
            if not contact.isdigit() or len(contact) > 32:
                yield Checked(line, "", {}, "hubspotContactId is not a HubSpot contact id")
                continue
            number = ""
        else:
            try:
                number = to_e164(raw, field="number")
            except AppError:
                error = "number is not a valid phone number in E.164 form"
                yield Checked(line, raw[:64], {}, error)
                continue
        try:
            variables = _variables(cells)
        except ValueError as exc:
            yield Checked(line, number, {}, str(exc))
            continue
        missing = missing_variables(templates, variables)
        if contact:  # the contact's properties fill {{hubspot.*}} when the row is dialed
            missing = [name for name in missing if not name.startswith(HUBSPOT_PREFIX)]
        if missing:
            yield Checked(line, number, {}, f"missing variables: {', '.join(missing)}")
            continue
        yield Checked(line, number, variables, None, hubspot_contact_id=contact or None)


async def create_batch(
    ctx: AppContext,
    session: AsyncSession,
    *,
    user: User,
    project: Project,
    agent: Agent,
    rows: RowSource,
    filename: str,
    campaign: Campaign | None = None,
) -> tuple[Batch, list[dict[str, Any]]]:
    """Validate every row, store the batch and its rows in one transaction, queue the dialer."""
    campaign = campaign or Campaign(window=None, retry={})
    if await number_of_agent(session, agent.id) is None:
        raise BadRequest(
            "The agent has no phone number to call from; assign one with /phone-number/add-number.",
            code="AGENT_HAS_NO_NUMBER",
        )
    ctx.telephony.ensure_configured()  # refused before anything is stored
    batch = Batch(
        user_id=user.id,
        project_id=project.id,
        agent_id=agent.id,
        filename=filename[:255],
        status=BatchStatus.RUNNING,
        call_window=campaign.window.public() if campaign.window else None,
        retry=retry_public(campaign.retry) or None,
    )
    session.add(batch)
    await session.flush()
    rejected: list[dict[str, Any]] = []
    chunk: list[dict[str, Any]] = []
    total = accepted = 0
    connected = await hubspot_connected(session, project.id)
    async for checked_chunk in rows(agent, connected):
        for checked in checked_chunk:
            total += 1
            if checked.error is None:
                accepted += 1
            elif len(rejected) < REJECTED_IN_ANSWER:
                rejected.append(
                    {"row": checked.row, "number": checked.number, "error": checked.error}
                )
            chunk.append(
                {
                    "id": uuid.uuid4(),
                    "batch_id": batch.id,
                    "row": checked.row,
                    "number": checked.number,
                    "variables": checked.variables,
                    "state": RowState.QUEUED if checked.error is None else RowState.REJECTED,
                    "error": checked.error,
                    "attempts": 0,
                    "hubspot_contact_id": checked.hubspot_contact_id,
                }
            )
        await session.execute(insert(BatchRow), chunk)
        chunk = []
    if total == 0:
        raise FileRejected("The file has no rows to call.", code="EMPTY_BATCH_FILE")
    batch.total, batch.accepted, batch.rejected = total, accepted, total - accepted
    if accepted:
        await lifecycle.wake_dialer(session, batch, utcnow())
    else:
        batch.status, batch.finished_at = BatchStatus.COMPLETED, utcnow()
    return batch, rejected


async def hubspot_connected(session: AsyncSession, project_id: uuid.UUID) -> bool:
    found = await session.scalar(
        select(HubSpotConnection.id).where(
            HubSpotConnection.project_id == project_id,
            HubSpotConnection.status == hubspot_service.ConnectionStatus.CONNECTED,
        )
    )
    return found is not None


async def counts(session: AsyncSession, batch_id: uuid.UUID) -> dict[str, int]:
    rows = await session.execute(
        select(BatchRow.state, func.count())
        .where(BatchRow.batch_id == batch_id)
        .group_by(BatchRow.state)
    )
    out = {state.value: 0 for state in RowState}
    out.update({state: n for state, n in rows})
    return out


async def outcomes(session: AsyncSession, batch_id: uuid.UUID) -> dict[str, int]:
    """How many rows ended with each outcome (their last call's final status)."""
    rows = await session.execute(
        select(BatchRow.outcome, func.count())
        .where(
            BatchRow.batch_id == batch_id,
            BatchRow.outcome.is_not(None),
            BatchRow.state.not_in(UNDECIDED),
        )
        .group_by(BatchRow.outcome)
    )
    return {outcome: n for outcome, n in rows if outcome is not None}


async def rows_page(
    session: AsyncSession, batch_id: uuid.UUID, *, after: int, size: int
) -> tuple[list[BatchRow], int | None]:
    found = list(
        (
            await session.scalars(
                select(BatchRow)
                .where(BatchRow.batch_id == batch_id, BatchRow.row > after)
                .order_by(BatchRow.row)
                .limit(size + 1)
            )
        ).all()
    )
    more = len(found) > size
    found = found[:size]
    return found, (found[-1].row if more and found else None)


async def cancel(session: AsyncSession, *, batch: Batch) -> Batch:
    """Stop a batch (its row locked by the router): rows not yet dialed are canceled; calls
    already placed go on."""
    if batch.status == BatchStatus.COMPLETED:
        raise Conflict("The batch has already finished.", code="BATCH_FINISHED")
    if batch.status in lifecycle.OPEN:
        batch.status = BatchStatus.CANCELED
        batch.finished_at = utcnow()
        await session.execute(
            update(BatchRow)
            .where(BatchRow.batch_id == batch.id, BatchRow.state == RowState.QUEUED)
            .values(state=RowState.CANCELED)
        )
    return batch


async def pause(session: AsyncSession, *, batch: Batch) -> Batch:
    """Stop claiming rows; calls already placed go on (and their outcomes are still decided).
    Pausing a paused batch is harmless."""
    _still_open(batch)
    batch.status = BatchStatus.PAUSED
    return batch


async def resume(session: AsyncSession, *, batch: Batch) -> Batch:
    """Dial a paused batch's rows again (within its call window). Resuming a running batch is
    harmless."""
    _still_open(batch)
    if batch.status == BatchStatus.PAUSED:
        batch.status = BatchStatus.RUNNING
        await lifecycle.wake_dialer(session, batch, utcnow())
    return batch


def _still_open(batch: Batch) -> None:
    if batch.status == BatchStatus.COMPLETED:
        raise Conflict("The batch has already finished.", code="BATCH_FINISHED")
    if batch.status == BatchStatus.CANCELED:
        raise Conflict("The batch was canceled.", code="BATCH_CANCELED")
