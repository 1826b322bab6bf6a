"""The phone-number object (docs/api/phone-numbers.md) and the /phone-number envelopes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from app.models import PhoneNumber
from app.schemas import Strict
from app.timefmt import iso_ms

NUMBER_EXAMPLE: dict[str, Any] = {
    "id": "3189fbff-f9fa-4920-b95c-63387b1204a4",
    "e164": "+14152148508",
    "status": "AVAILABLE",
    "projectId": "94f53ecd-ec99-42fc-bc69-e79468550af2",
    "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
    "created_at": "2025-03-13T01:57:29.186Z",
}


class PhoneNumberOut(BaseModel):
    id: str
    e164: str
    status: Literal["AVAILABLE"]
    projectId: str
    agentId: str
    created_at: str

    model_config = ConfigDict(json_schema_extra={"example": NUMBER_EXAMPLE})

    @classmethod
    def of(cls, number: PhoneNumber) -> PhoneNumberOut:
        return cls(
            id=str(number.id),
            e164=number.e164,
            status="AVAILABLE",
            projectId=str(number.project_id),
            agentId=str(number.agent_id),
            created_at=iso_ms(number.created_at) or "",
        )


class LookupIn(Strict):
    phoneNumberId: str | None = None
    agentId: str | None = None
    projectId: str | None = None

    model_config = ConfigDict(
        json_schema_extra={"example": {"agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857"}}
    )


class LookupOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    data: PhoneNumberOut
    numbers: list[PhoneNumberOut] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "Phone number details fetched successfully.",
                "status": "success",
                "data": NUMBER_EXAMPLE,
            }
        }
    )


class AddNumberIn(Strict):
    e164: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
    agentId: str
    projectId: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "e164": "+14155550100",
                "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
            }
        }
    )


class AddNumberOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    data: PhoneNumberOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "PhoneNumber assigned successfully.",
                "status": "success",
                "data": NUMBER_EXAMPLE,
            }
        }
    )
