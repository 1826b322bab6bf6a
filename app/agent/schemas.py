"""The agent object (docs/api/agents.md) and the /agent/* envelopes."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

import jsonschema_rs
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
# The tools every agent has (app/conversation/tools.py): a custom tool may not take their names.
BUILTIN_TOOLS = frozenset({"end_call", "transfer_call", "press_digits"})
MAX_TOOLS = 20
# A tool's parameter schema goes to the LLM with every turn: keep it small.
MAX_TOOL_SCHEMA_CHARS = 8000

TOOL_EXAMPLE: dict[str, Any] = {
    "name": "book_appointment",
    "description": "Book the appointment the callee agreed to.",
    "parameters": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "description": "The day, e.g. Friday"},
            "time": {"type": "string", "description": "The time, e.g. 15:30"},
        },
        "required": ["day", "time"],
    },
    "url": "https://example.com/talkstack/book",
    "timeoutSeconds": 8,
    "fillerMessage": "One moment, let me book that for you.",
}

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
    "transferNumber": "+14155550199",
    "transferMode": "cold",
    "tools": [TOOL_EXAMPLE],
    "voicemailMessage": "Hi {{name}}, this is Jack from the clinic. Please call us back.",
    "successCriteria": "The callee confirmed the appointment or picked a new time.",
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


class AgentTool(Strict):
    """A tool the agent's LLM may call: the server POSTs its arguments to `url` (signed like
    project webhooks) and gives the answer back to the LLM."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)
    ]
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]
    timeoutSeconds: Annotated[float, Field(ge=1, le=30)] = 8.0
    fillerMessage: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
        | None
    ) = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, v: str) -> str:
        if v in BUILTIN_TOOLS:
            raise ValueError(f"{v} is a built-in tool; choose another name")
        return v

    @field_validator("parameters")
    @classmethod
    def _json_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") != "object":
            raise ValueError('must be a JSON schema of an object ("type": "object")')
        if len(json.dumps(v)) > MAX_TOOL_SCHEMA_CHARS:
            raise ValueError(f"must be at most {MAX_TOOL_SCHEMA_CHARS} characters as JSON")
        if not jsonschema_rs.meta.is_valid(v):
            raise ValueError("is not a valid JSON schema")
        return v


def _unique_tools(tools: list[AgentTool] | None) -> list[AgentTool] | None:
    names = [t.name for t in tools or []]
    if len(set(names)) != len(names):
        raise ValueError("tool names must be unique")
    return tools


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
Tools = Annotated[list[AgentTool], Field(max_length=MAX_TOOLS)]
PhoneField = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
# PUT /agent: these may be set to null (the agent then has none).
NULLABLE_FIELDS = frozenset(
    {"firstMessage", "transferNumber", "voicemailMessage", "successCriteria"}
)


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
    transferNumber: PhoneField | None = None
    transferMode: Literal["cold", "warm"] | None = None
    tools: Tools | None = None
    voicemailMessage: LongText | None = None
    successCriteria: LongText | None = None

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        return _check_language(v)

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[AgentTool] | None) -> list[AgentTool] | None:
        return _unique_tools(v)


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
        """The fields the client actually sent (null is a value only where it means "none")."""
        sent = self.model_fields_set - {"projectId", "agentId"}
        return {
            k: getattr(self, k)
            for k in sent
            if getattr(self, k) is not None or k in NULLABLE_FIELDS
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
    transferNumber: str | None = None
    transferMode: Literal["cold", "warm"] = "cold"
    tools: list[AgentTool] = Field(default_factory=list)
    voicemailMessage: str | None = None
    successCriteria: str | None = None
    created_at: str
    updated_at: str
    # Set once, when this request made the project's signing secret (its first tools).
    webhookSecret: str | None = Field(default=None, exclude_if=lambda v: v is None)

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
            transferNumber=agent.transfer_number,
            transferMode="warm" if agent.transfer_mode == "warm" else "cold",
            tools=[AgentTool.model_validate(t) for t in agent.tools],
            voicemailMessage=agent.voicemail_message,
            successCriteria=agent.success_criteria,
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
