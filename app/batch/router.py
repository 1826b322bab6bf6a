"""/call/batch-call: upload a spreadsheet of calls, follow it, pause, resume or cancel it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from app.batch import service
from app.batch.campaign import parse_campaign
from app.batch.parse import MAX_BYTES, read_rows
from app.batch.schemas import (
    RETRY_EXAMPLE,
    WINDOW_EXAMPLE,
    BatchCanceledOut,
    BatchControlOut,
    BatchCreated,
    BatchCreatedOut,
    BatchOut,
    BatchProgressOut,
    BatchRowOut,
    RejectedRow,
    retry_out,
    window_out,
)
from app.deps import CtxDep, CurrentUser, SessionDep
from app.errors import AppError, BadRequest
from app.models import Batch
from app.ownership import LockedBatch, owned_agent, owned_batch
from app.schemas import error_responses

router = APIRouter(prefix="/call/batch-call", tags=["batch"])

# Room for the form's other fields and the multipart boundaries around a 10 MB file.
_ENVELOPE = 64 * 1024

_MULTIPART: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["projectId", "agentId", "file"],
                    "properties": {
                        "projectId": {"type": "string"},
                        "agentId": {"type": "string"},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".csv (UTF-8, comma or semicolon) or .xlsx (by the "
                            "file's name, checked against its content; anything else is 400 "
                            "UNSUPPORTED_FILE_TYPE), at most 10 MB and 100,000 rows; a "
                            "`number` column, optional `dynamicVariables` (a JSON object) and "
                            "any other column as a variable",
                        },
                        "callWindow": {
                            "type": "string",
                            "description": "Optional JSON object: rows are dialed only on "
                            "`days` (mon … sun; default every day) from `start` to `end` "
                            '("HH:MM", start before end, end up to "24:00") in `timezone` '
                            "(IANA), the batch's zone for every row; outside it rows wait.",
                            "example": json.dumps(WINDOW_EXAMPLE),
                        },
                        "retry": {
                            "type": "string",
                            "description": "Optional JSON object: for a call ending "
                            "`no-answer`, `busy`, `voicemail` or `failed`, the row is called "
                            "again (a new call) `delaySeconds` later (60 to 604800, within the "
                            "call window), up to `attempts` calls in all (1 to 10, the first "
                            "included).",
                            "example": json.dumps(RETRY_EXAMPLE),
                        },
                    },
                }
            }
        },
    }
}


class PayloadTooLarge(AppError):
    status_code = 413
    code = "FILE_TOO_LARGE"


class LengthRequired(AppError):
    status_code = 411
    code = "LENGTH_REQUIRED"


@router.post(
    "",
    response_model=BatchCreatedOut,
    responses=error_responses(401, 404, 413, 503),
    openapi_extra=_MULTIPART,
)
async def batch_call(
    request: Request, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> BatchCreatedOut:
    """Call every row of a spreadsheet with the agent; every row is validated first."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise LengthRequired("Send the upload with a Content-Length.")
    if int(length) > MAX_BYTES + _ENVELOPE:
        raise PayloadTooLarge("The file is larger than 10 MB.")
    if not request.headers.get("content-type", "").startswith(
        ("multipart/form-data", "application/x-www-form-urlencoded")
    ):
        raise BadRequest(
            "Send multipart/form-data with projectId, agentId and file.",
            code="VALIDATION_ERROR",
            errors=[{"field": "body", "message": "must be multipart/form-data"}],
        )
    async with request.form(max_files=1, max_fields=10) as form:
        errors = []
        project_id, agent_id, upload = form.get("projectId"), form.get("agentId"), form.get("file")
        for name, value, want in (
            ("projectId", project_id, str),
            ("agentId", agent_id, str),
            ("file", upload, UploadFile),
        ):
            if not isinstance(value, want) or (isinstance(value, str) and not value.strip()):
                errors.append({"field": name, "message": "is required"})
        if errors:
            summary = "; ".join(f"{e['field']} {e['message']}" for e in errors)
            raise BadRequest(f"Invalid request: {summary}.", code="VALIDATION_ERROR", errors=errors)
        assert isinstance(upload, UploadFile)
        assert isinstance(project_id, str) and isinstance(agent_id, str)
        if upload.size is not None and upload.size > MAX_BYTES:
            raise PayloadTooLarge("The file is larger than 10 MB.")
        window, retry = form.get("callWindow"), form.get("retry")
        if isinstance(window, UploadFile) or isinstance(retry, UploadFile):
            field = "callWindow" if isinstance(window, UploadFile) else "retry"
            raise BadRequest(
                f"Invalid request: {field} must be a JSON text field, not a file.",
                code="VALIDATION_ERROR",
                errors=[{"field": field, "message": "must be a JSON text field, not a file"}],
            )
        campaign = parse_campaign(window, retry)
        project, agent = await owned_agent(
            session, user=user, project_id=project_id.strip(), agent_id=agent_id.strip()
        )
        batch, rejected = await service.create_batch(
            ctx,
            session,
            user=user,
            project=project,
            agent=agent,
            rows=_in_thread(upload.file, upload.filename or ""),
            filename=upload.filename or "",
            campaign=campaign,
        )
    return BatchCreatedOut(
        message="batch created.",
        batch=BatchCreated(
            id=str(batch.id),
            status=batch.status,
            total=batch.total,
            accepted=batch.accepted,
            rejected=[RejectedRow(**r) for r in rejected],
            rejectedCount=batch.rejected,
            callWindow=window_out(batch),
            retry=retry_out(batch),
        ),
    )


def _in_thread(file: IO[bytes], filename: str) -> service.RowSource:
    """Parsing and validating rows is CPU work: done in a worker thread, a chunk at a time."""

    def make(agent: Any, hubspot_connected: bool) -> Any:
        checked: Generator[service.Checked] = service.check_rows(
            read_rows(file, filename), agent, hubspot_connected
        )

        def take() -> list[service.Checked]:
            out = []
            for item in checked:
                out.append(item)
                if len(out) >= service.INSERT_CHUNK:
                    break
            return out

        async def chunks() -> Any:
            try:
                while True:
                    chunk = await asyncio.to_thread(take)
                    if not chunk:
                        return
                    yield chunk
            finally:
                checked.close()  # a reader that stopped early (an error) lets go of the file

        return chunks()

    return make


@router.get("/{batchId}", response_model=BatchProgressOut, responses=error_responses(401, 404))
async def get_batch(
    batchId: str,
    user: CurrentUser,
    session: SessionDep,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 100,
    pageToken: Annotated[str | None, Query(max_length=12)] = None,
) -> BatchProgressOut:
    """The batch's totals by row state, and its rows in file order, pageSize at a time."""
    after = 0
    if pageToken:
        if not pageToken.isdigit():
            raise BadRequest("pageToken is not valid.", code="INVALID_PAGE_TOKEN")
        after = int(pageToken)
    batch = await owned_batch(session, user=user, batch_id=batchId)
    rows, last = await service.rows_page(session, batch.id, after=after, size=pageSize)
    return BatchProgressOut(
        message="successfully fetched batch.",
        batch=await _batch_out(session, batch),
        rows=[BatchRowOut.of(r) for r in rows],
        nextPageToken=str(last) if last is not None else None,
    )


@router.post(
    "/{batchId}/cancel", response_model=BatchCanceledOut, responses=error_responses(401, 404, 409)
)
async def cancel_batch(batch: LockedBatch, session: SessionDep) -> BatchCanceledOut:
    """Stop the batch: rows not yet dialed are canceled; calls already placed go on."""
    batch = await service.cancel(session, batch=batch)
    return BatchCanceledOut(message="batch canceled.", batch=await _batch_out(session, batch))


@router.post(
    "/{batchId}/pause", response_model=BatchControlOut, responses=error_responses(401, 404, 409)
)
async def pause_batch(batch: LockedBatch, session: SessionDep) -> BatchControlOut:
    """Stop dialing new rows until resumed; calls already placed go on."""
    batch = await service.pause(session, batch=batch)
    return BatchControlOut(message="batch paused.", batch=await _batch_out(session, batch))


@router.post(
    "/{batchId}/resume", response_model=BatchControlOut, responses=error_responses(401, 404, 409)
)
async def resume_batch(batch: LockedBatch, session: SessionDep) -> BatchControlOut:
    """Dial a paused batch's remaining rows again (within its call window)."""
    batch = await service.resume(session, batch=batch)
    return BatchControlOut(message="batch resumed.", batch=await _batch_out(session, batch))


async def _batch_out(session: AsyncSession, batch: Batch) -> BatchOut:
    await session.flush()
    counts = await service.counts(session, batch.id)
    return BatchOut.of(batch, counts, await service.outcomes(session, batch.id))
