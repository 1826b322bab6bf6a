"""Batch calls' envelopes (docs/api/batch-calls.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.batch.lifecycle import UNDECIDED, RowState
from app.models import Batch, BatchRow
from app.timefmt import iso_ms

# The values of app.models.BatchStatus, inline in the OpenAPI document (a test keeps them equal).
BatchStatus = Literal["running", "paused", "completed", "canceled"]


class CallWindowOut(BaseModel):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]]
    start: str
    end: str
    timezone: str


class RetryRuleOut(BaseModel):
    attempts: int
    delaySeconds: int


def window_out(batch: Batch) -> CallWindowOut | None:
    return CallWindowOut(**batch.call_window) if batch.call_window else None


def retry_out(batch: Batch) -> dict[str, RetryRuleOut] | None:
    retry: dict[str, Any] | None = batch.retry
    return {k: RetryRuleOut(**v) for k, v in retry.items()} if retry else None


WINDOW_EXAMPLE: dict[str, Any] = {
    "days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:30",
    "timezone": "America/New_York",
}  # fmt: skip
RETRY_EXAMPLE: dict[str, Any] = {
    "no-answer": {"attempts": 3, "delaySeconds": 3600},
    "busy": {"attempts": 2, "delaySeconds": 600},
    "voicemail": {"attempts": 2, "delaySeconds": 86400},
}


class RejectedRow(BaseModel):
    row: int
    number: str
    error: str


class BatchCreated(BaseModel):
    id: str
    status: BatchStatus
    total: int
    accepted: int
    rejected: list[RejectedRow]
    rejectedCount: int
    callWindow: CallWindowOut | None = None
    retry: dict[str, RetryRuleOut] | None = None


class BatchCreatedOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    batch: BatchCreated

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "batch created.",
                "status": "success",
                "batch": {
                    "id": "6d1f1e8e-3c0b-4a55-9d63-1f3a2f0c9b11",
                    "status": "running",
                    "total": 3,
                    "accepted": 2,
                    "rejected": [{"row": 4, "number": "12345", "error": "number is not a valid "
                                  "phone number in E.164 form"}],
                    "rejectedCount": 1,
                    "callWindow": WINDOW_EXAMPLE,
                    "retry": RETRY_EXAMPLE,
                },
            }
        }
    )  # fmt: skip


class BatchRowOut(BaseModel):
    row: int
    number: str
    state: Literal["queued", "dialing", "dialed", "failed", "canceled", "rejected"]
    callSid: str | None  # the current (last) call's
    error: str | None
    attempts: int  # calls made for the row
    outcome: str | None  # the last call's final status, once no retry is pending
    nextAttemptAt: str | None  # a queued row's earliest dial time (a retry's)

    @classmethod
    def of(cls, row: BatchRow) -> BatchRowOut:
        return cls(
            row=row.row, number=row.number, state=row.state,
            callSid=row.call_sid, error=row.error, attempts=row.call_attempts,
            outcome=None if row.state in UNDECIDED else row.outcome,
            nextAttemptAt=(
                iso_ms(row.next_attempt_at)
                if row.state == RowState.QUEUED and row.next_attempt_at else None
            ),
        )  # fmt: skip


class BatchOut(BaseModel):
    id: str
    projectId: str
    agentId: str
    status: BatchStatus
    filename: str
    total: int
    accepted: int
    rejected: int
    counts: dict[str, int]
    outcomes: dict[str, int]  # rows by final outcome
    callWindow: CallWindowOut | None
    retry: dict[str, RetryRuleOut] | None
    created_at: str
    finished_at: str | None

    @classmethod
    def of(cls, batch: Batch, counts: dict[str, int], outcomes: dict[str, int]) -> BatchOut:
        return cls(
            id=str(batch.id),
            projectId=str(batch.project_id),
            agentId=str(batch.agent_id),
            status=batch.status,
            filename=batch.filename,
            total=batch.total,
            accepted=batch.accepted,
            rejected=batch.rejected,
            counts=counts,
            outcomes=outcomes,
            callWindow=window_out(batch),
            retry=retry_out(batch),
            created_at=iso_ms(batch.created_at),
            finished_at=iso_ms(batch.finished_at) if batch.finished_at else None,
        )


class BatchProgressOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    batch: BatchOut
    rows: list[BatchRowOut]
    nextPageToken: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully fetched batch.",
                "status": "success",
                "batch": {
                    "id": "6d1f1e8e-3c0b-4a55-9d63-1f3a2f0c9b11",
                    "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                    "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                    "status": "running", "filename": "leads.csv",
                    "total": 3, "accepted": 2, "rejected": 1,
                    "counts": {"queued": 1, "dialing": 0, "dialed": 1, "failed": 0,
                               "canceled": 0, "rejected": 1},
                    "outcomes": {"no-answer": 1},
                    "callWindow": WINDOW_EXAMPLE, "retry": RETRY_EXAMPLE,
                    "created_at": "2026-11-26T01:30:00.000Z", "finished_at": None,
                },
                "rows": [
                    {"row": 2, "number": "+14155550123", "state": "dialed",
                     "callSid": "CA26e39c970fd416515799f5a165718be3", "error": None,
                     "attempts": 3, "outcome": "no-answer", "nextAttemptAt": None},
                    {"row": 3, "number": "+14155550124", "state": "queued",
                     "callSid": None, "error": None, "attempts": 1, "outcome": None,
                     "nextAttemptAt": "2026-11-26T02:31:00.000Z"},
                ],
                "nextPageToken": "2",
            }
        }
    )  # fmt: skip


class BatchControlOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    batch: BatchOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "batch paused.",
                "status": "success",
                "batch": {
                    "id": "6d1f1e8e-3c0b-4a55-9d63-1f3a2f0c9b11",
                    "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                    "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                    "status": "paused", "filename": "leads.csv",
                    "total": 3, "accepted": 2, "rejected": 1,
                    "counts": {"queued": 1, "dialing": 0, "dialed": 1, "failed": 0,
                               "canceled": 0, "rejected": 1},
                    "outcomes": {}, "callWindow": None, "retry": None,
                    "created_at": "2026-11-26T01:30:00.000Z", "finished_at": None,
                },
            }
        }
    )  # fmt: skip


class BatchCanceledOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    batch: BatchOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "batch canceled.",
                "status": "success",
                "batch": {
                    "id": "6d1f1e8e-3c0b-4a55-9d63-1f3a2f0c9b11",
                    "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                    "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                    "status": "canceled", "filename": "leads.csv",
                    "total": 3, "accepted": 2, "rejected": 1,
                    "counts": {"queued": 0, "dialing": 0, "dialed": 1, "failed": 0,
                               "canceled": 1, "rejected": 1},
                    "outcomes": {"completed": 1},
                    "callWindow": None, "retry": None,
                    "created_at": "2026-11-26T01:30:00.000Z",
                    "finished_at": "2026-11-26T01:31:12.000Z",
                },
            }
        }
    )  # fmt: skip
