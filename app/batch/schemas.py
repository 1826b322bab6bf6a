"""Batch calls' envelopes (CONTRACT.md §7)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.models import Batch, BatchRow
from app.timefmt import iso_ms


class RejectedRow(BaseModel):
    row: int
    number: str
    error: str


class BatchCreated(BaseModel):
    id: str
    status: Literal["running", "completed", "canceled"]
    total: int
    accepted: int
    rejected: list[RejectedRow]
    rejectedCount: int


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
                },
            }
        }
    )  # fmt: skip


class BatchRowOut(BaseModel):
    row: int
    number: str
    state: Literal["queued", "dialing", "dialed", "failed", "canceled", "rejected"]
    callSid: str | None
    error: str | None

    @classmethod
    def of(cls, row: BatchRow) -> BatchRowOut:
        return cls(
            row=row.row, number=row.number, state=row.state,
            callSid=row.call_sid, error=row.error,
        )  # fmt: skip


class BatchOut(BaseModel):
    id: str
    projectId: str
    agentId: str
    status: Literal["running", "completed", "canceled"]
    filename: str
    total: int
    accepted: int
    rejected: int
    counts: dict[str, int]
    created_at: str
    finished_at: str | None

    @classmethod
    def of(cls, batch: Batch, counts: dict[str, int]) -> BatchOut:
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
                    "created_at": "2026-11-26T01:30:00.000Z", "finished_at": None,
                },
                "rows": [
                    {"row": 2, "number": "+14155550123", "state": "dialed",
                     "callSid": "CA26e39c970fd416515799f5a165718be3", "error": None},
                ],
                "nextPageToken": "2",
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
                    "created_at": "2026-11-26T01:30:00.000Z",
                    "finished_at": "2026-11-26T01:31:12.000Z",
                },
            }
        }
    )  # fmt: skip
