"""The call object (docs/api/calls.md) and the /call/* envelopes."""

from __future__ import annotations

from email.utils import format_datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.agent.schemas import AnalysisQuestion
from app.models import Call
from app.schemas import Strict

CallStatus = Literal[
    "queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed",
    "no-answer", "canceled", "voicemail", "silence",
]  # fmt: skip

MAX_VARIABLES = 100

CALL_EXAMPLE: dict[str, Any] = {
    "seconds": 23,
    "cost": 0.077,
    "status": "completed",
    "from": "+14152148508",
    "to": "+12068091239",
    "date": "Tue, 30 Jan 2024 13:39:53 +0000",
    "recordingUrls": [
        "https://api.twilio.com/2010-04-01/Accounts/AC0123/Recordings/RE26e39c970fd416515799f5a165718be3.mp3"
    ],
    "phoneNumber": "+12068091239",
    "callSid": "CA26e39c970fd416515799f5a165718be3",
    "data": {},
    "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
    "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
    "direction": "outbound",
    "dynamicVariables": {"name": "John"},
    "batchId": None,
    "answeredBy": "human",
    "endedReason": None,
    "transferredTo": None,
    "transferCallSid": None,
    "transferStatus": None,
    "transferSeconds": None,
    "transferCost": None,
    "transcript": [],
}

Variables = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        Annotated[str, StringConstraints(max_length=2000)] | int | float | bool,
    ],
    Field(max_length=MAX_VARIABLES),
]


class MakeCallIn(Strict):
    number: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None
    ) = None
    hubspotContactId: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)] | None
    ) = Field(
        default=None,
        description="Instead of number: a contact of the project's connected HubSpot account. "
        "Its phone (else mobile phone) is called, and its properties fill "
        "{{hubspot.<property>}} placeholders ({{hubspot.firstname}}).",
    )
    projectId: str
    agentId: str
    dynamicVariables: Variables | None = None

    @model_validator(mode="after")
    def _one_destination(self) -> MakeCallIn:
        if (self.number is None) == (self.hubspotContactId is None):
            raise ValueError("give either number or hubspotContactId (exactly one)")
        return self

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "number": "+14155550123",
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                "dynamicVariables": {"name": "John"},
            }
        }
    )

    def variables(self) -> dict[str, str]:
        out = {}
        for k, v in (self.dynamicVariables or {}).items():
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out


class PlacedCallOut(BaseModel):
    call_id: str
    to: str
    from_: str = Field(serialization_alias="from")
    status: str

    model_config = ConfigDict(populate_by_name=True)


class MakeCallOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    call: PlacedCallOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "call made successfully.",
                "status": "success",
                "call": {
                    "call_id": "CA26e39c970fd416515799f5a165718be3",
                    "to": "+14155550123",
                    "from": "+14152148508",
                    "status": "queued",
                },
            }
        }
    )


class CallOut(BaseModel):
    seconds: int | None
    cost: float | None
    status: CallStatus
    from_: str = Field(serialization_alias="from")
    to: str
    date: str
    recordingUrls: list[str]
    phoneNumber: str
    callSid: str | None
    data: dict[str, Any]
    agentId: str | None
    projectId: str
    direction: Literal["outbound", "inbound"]
    dynamicVariables: dict[str, str]
    batchId: str | None
    answeredBy: str | None
    endedReason: str | None
    # The human the agent transferred the call to (endedReason `transferred`, or the reason
    # the call ended after a failed warm transfer sent the callee back to the agent).
    transferredTo: str | None = None
    # The transfer's call to the human: a Twilio call of its own, billed on its own.
    transferCallSid: str | None = Field(
        default=None,
        description="The transfer's call to the human (its own Twilio Call SID; a cold "
        "transfer's once its `<Dial>` is over); null without one.",
        examples=["CA5b7c1e2d3f4a5b6c7d8e9f0a1b2c3d4e"],
    )
    transferStatus: str | None = Field(
        default=None,
        description="The latest Twilio status of that call: `completed` once the human "
        "answered and hung up; `busy`, `no-answer`, `failed` or `canceled` when the transfer "
        "failed.",
        examples=["completed"],
    )
    transferSeconds: int | None = Field(
        default=None,
        description="That call's duration in seconds, once it is over.",
        examples=[95],
    )
    transferCost: float | None = Field(
        default=None,
        description="That call's Twilio price (positive), once Twilio has priced it; not part "
        "of `cost`.",
        examples=[0.0255],
    )
    transcript: list[dict[str, Any]]

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"example": CALL_EXAMPLE})

    @classmethod
    def of(cls, call: Call) -> CallOut:
        return cls(
            seconds=call.seconds,
            cost=float(call.cost) if call.cost is not None else None,
            status=call.status,
            from_=call.from_number,
            to=call.to_number,
            date=format_datetime(call.created_at),
            recordingUrls=list(call.recording_urls),
            phoneNumber=call.to_number if call.direction == "outbound" else call.from_number,
            callSid=call.call_sid,
            data=dict(call.data),
            agentId=str(call.agent_id) if call.agent_id else None,
            projectId=str(call.project_id),
            direction=call.direction,
            dynamicVariables=dict(call.dynamic_variables),
            batchId=str(call.batch_id) if call.batch_id else None,
            answeredBy=call.answered_by,
            endedReason=call.ended_reason,
            transferredTo=call.transferred_to,
            transferCallSid=call.transfer_call_sid,
            transferStatus=call.transfer_status,
            transferSeconds=call.transfer_seconds,
            transferCost=float(call.transfer_cost) if call.transfer_cost is not None else None,
            transcript=list(call.transcript),
        )

    def public(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class GetCallIn(Strict):
    sid: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] = (
        Field(validation_alias=AliasChoices("sid", "callSid"))
    )
    projectId: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "sid": "CA26e39c970fd416515799f5a165718be3",
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
            }
        }
    )


class HistoryIn(Strict):
    projectId: str
    pageSize: Annotated[int, Field(ge=1, le=100)] = 20
    pageToken: Annotated[str, StringConstraints(max_length=1000)] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b", "pageSize": 20}
        }
    )

    @field_validator("pageToken")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


class HistoryOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    calls: list[CallOut]
    nextPageToken: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully fetched call history.",
                "status": "success",
                "calls": [CALL_EXAMPLE],
                "nextPageToken": "eyJ0IjoiMjAyNS0wMy0xMFQwNToyMDozOS44MzFaIiwiaSI6Ij...",
            }
        }
    )


class AnalysisIn(Strict):
    sid: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] = (
        Field(validation_alias=AliasChoices("sid", "callSid"))
    )
    questions: list[AnalysisQuestion] | None = Field(default=None, max_length=50)
    projectId: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "sid": "CA26e39c970fd416515799f5a165718be3",
                "questions": [
                    {"question": "Is the user interested in buying the product?",
                     "type": "Boolean"},
                    {"question": "How many products does the user want?", "type": "Number"},
                    {"question": "Why does the user enroll somewhere else?", "type": "Selector",
                     "options": ["User got better offers.", "User is not interested anymore."]},
                ],
            }
        }
    )  # fmt: skip


class AnalysisAnswer(BaseModel):
    question: str
    type: Literal["Boolean", "Text", "Number", "Selector"]
    answer: str | int | float


class Analysis(BaseModel):
    summary: str
    sentiment: Literal["positive", "neutral", "negative"]
    # Judged against the agent's successCriteria (present only when the agent has them).
    successful: bool | None = Field(default=None, exclude_if=lambda v: v is None)
    answers: list[AnalysisAnswer]


class AnalysisOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    analysis: Analysis

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully analysed the call.",
                "status": "success",
                "analysis": {
                    "summary": "The agent presented the offer; the user wants two units.",
                    "sentiment": "positive",
                    "successful": True,
                    "answers": [
                        {"question": "Is the user interested in buying the product?",
                         "type": "Boolean", "answer": "Yes"},
                        {"question": "How many products does the user want?",
                         "type": "Number", "answer": 2},
                    ],
                },
            }
        }
    )  # fmt: skip
