"""The agent object (CONTRACT.md §4) and the /agent/* envelopes."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.models import Agent
from app.schemas import Strict
from app.timefmt import iso_ms

LANGUAGE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
MAX_QUESTIONS = 50

AGENT_EXAMPLE: dict[str, Any] = {
    "id": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
    "name": "Jack",
    "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
    "systemInstruction": "You are Jack, calling {{name}} about their dentist appointment.",
    "voice_id": "EXAVITQu4vr4xnSDxMaL",
    "phoneNumber": "+14155550100",
    "firstMessage": "Hi {{name}}, this is Jack from the clinic.",
    "language": "en-US",
    "maxCallDurationSeconds": 600,
    "analysisQuestions": [
        {"question": "Did the callee confirm the appointment?", "type": "Boolean"},
        {"question": "Preferred time", "type": "Selector", "options": ["Morning", "Afternoon"]},
    ],
    "created_at": "2025-03-13T01:57:29.186Z",
    "updated_at": "2025-03-13T01:57:29.186Z",
}


class AnalysisQuestion(BaseModel):
    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    type: Literal["Boolean", "Text", "Number", "Selector"]
    options: (
        list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]]
        | None
    ) = Field(default=None, max_length=50, exclude_if=lambda v: v is None)

    @model_validator(mode="after")
    def _options_fit_type(self) -> AnalysisQuestion:
        if self.type == "Selector":
            if not self.options or len(set(self.options)) < 2:
                raise ValueError("a Selector question needs at least two different options")
        elif self.options:
            raise ValueError(f"options are only for Selector questions, not {self.type}")
        return self


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
# Up to 32,000 characters: a long prompt with its knowledge base still fits the model's context.
Instruction = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32_000)
]
FirstMessage = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)
]
VoiceId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Language = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=35)]
# The longest call an agent may take: Twilio ends any call at 4 hours.
MAX_CALL_SECONDS = 14400
Duration = Annotated[int, Field(ge=10, le=MAX_CALL_SECONDS)]
Questions = Annotated[list[AnalysisQuestion], Field(max_length=MAX_QUESTIONS)]


def _check_language(v: str | None) -> str | None:
    if v is not None and not LANGUAGE_RE.match(v):
        raise ValueError("must be a BCP-47 language tag such as en-US")
    return v


class AgentFields(Strict):
    """The writable fields an agent shares between create and update."""

    voice_id: VoiceId | None = None
    firstMessage: FirstMessage | None = None
    language: Language | None = None
    maxCallDurationSeconds: Duration | None = None
    analysisQuestions: Questions | None = None

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        return _check_language(v)


class CreateAgentIn(AgentFields):
    name: Name
    systemInstruction: Instruction
    projectId: str
    phoneNumber: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None
    ) = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "Jack",
                "systemInstruction": "You are an agent called Jack. You can take any questions "
                "related to Mathematics.",
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                "voice_id": "EXAVITQu4vr4xnSDxMaL",
                "firstMessage": "Hello, this is Jack. How can I help?",
            }
        }
    )


class AgentRefIn(Strict):
    projectId: str
    agentId: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
            }
        }
    )


PhoneField = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]


class UpdateAgentIn(AgentFields):
    projectId: str
    agentId: str
    name: Name | None = None
    systemInstruction: Instruction | None = None
    phoneNumber: PhoneField | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                "agentId": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                "name": "Jack",
                "systemInstruction": "You are Jack. You answer questions about astronomy.",
                "voice_id": "EXAVITQu4vr4xnSDxMaL",
            }
        }
    )

    def changes(self) -> dict[str, Any]:
        """The fields the client actually sent (null is a value only for firstMessage)."""
        sent = self.model_fields_set - {"projectId", "agentId"}
        return {
            k: getattr(self, k) for k in sent if getattr(self, k) is not None or k == "firstMessage"
        }


class AgentOut(BaseModel):
    id: str
    name: str
    projectId: str
    systemInstruction: str
    voice_id: str
    phoneNumber: str | None
    firstMessage: str | None
    language: str
    maxCallDurationSeconds: int
    analysisQuestions: list[AnalysisQuestion]
    created_at: str
    updated_at: str

    model_config = ConfigDict(json_schema_extra={"example": AGENT_EXAMPLE})

    @classmethod
    def of(cls, agent: Agent, phone_number: str | None) -> AgentOut:
        return cls(
            id=str(agent.id),
            name=agent.name,
            projectId=str(agent.project_id),
            systemInstruction=agent.system_instruction,
            voice_id=agent.voice_id,
            phoneNumber=phone_number,
            firstMessage=agent.first_message,
            language=agent.language,
            maxCallDurationSeconds=agent.max_call_duration_seconds,
            analysisQuestions=[
                AnalysisQuestion.model_validate(q) for q in agent.analysis_questions
            ],
            created_at=iso_ms(agent.created_at) or "",
            updated_at=iso_ms(agent.updated_at) or "",
        )


class UpdatedAgentOut(AgentOut):
    agentId: str

    model_config = ConfigDict(
        json_schema_extra={"example": {**AGENT_EXAMPLE, "agentId": AGENT_EXAMPLE["id"]}}
    )


class AgentDataOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    data: AgentOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully created agent.",
                "status": "success",
                "data": AGENT_EXAMPLE,
            }
        }
    )
