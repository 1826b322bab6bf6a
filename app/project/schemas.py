"""The project object (docs/api/projects.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

from app.integrations.webhooks.sender import CallEvent
from app.schemas import Strict
from app.timefmt import iso_ms

if TYPE_CHECKING:
    from app.models import WebhookDelivery

PROJECT_EXAMPLE: dict[str, Any] = {
    "id": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
    "name": "Project Name",
    "description": "Project Description",
    "user_id": "3189fbff-f9fa-4920-b95c-63387b1204a4",
    "status": "ACTIVE",
    "is_deleted": False,
    "call_status_webhook": "https://example.com/talkstack/events",
    "active_agent": None,
    "created_at": "2025-03-10T05:20:39.831Z",
    "updated_at": "2025-03-10T05:20:39.831Z",
}


class ProjectFields(Protocol):
    """What ProjectOut is made from: a Project row, or the active project read with the
    caller's credential (app/auth/credentials.ActiveProject)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def user_id(self) -> uuid.UUID: ...
    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def is_deleted(self) -> bool: ...
    @property
    def call_status_webhook(self) -> str | None: ...
    @property
    def active_agent_id(self) -> uuid.UUID | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


class ProjectOut(BaseModel):
    id: str
    name: str
    description: str
    user_id: str
    status: Literal["ACTIVE"]
    is_deleted: bool
    call_status_webhook: str | None
    active_agent: str | None
    created_at: str
    updated_at: str

    model_config = ConfigDict(json_schema_extra={"example": PROJECT_EXAMPLE})

    @classmethod
    def of(cls, project: ProjectFields) -> ProjectOut:
        # Validated, not model_construct: pydantic-core validates these ten plain fields in
        # about half the time model_construct's Python loop takes to skip validating them.
        return cls(
            id=str(project.id),
            name=project.name,
            description=project.description,
            user_id=str(project.user_id),
            status="ACTIVE",
            is_deleted=project.is_deleted,
            call_status_webhook=project.call_status_webhook,
            active_agent=str(project.active_agent_id) if project.active_agent_id else None,
            created_at=iso_ms(project.created_at) or "",
            updated_at=iso_ms(project.updated_at) or "",
        )


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=5000)]
WebhookUrl = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]


class CreateProjectIn(Strict):
    name: Name
    description: Description = ""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"name": "Demo Project", "description": "This is a demo project."}
        }
    )


class UpdateProjectIn(Strict):
    name: Name | None = None
    description: Description | None = None
    webhookUrl: WebhookUrl | None = Field(
        default=None, validation_alias=AliasChoices("webhookUrl", "webhookURL")
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "Demo Project",
                "description": "This is a project.",
                "webhookUrl": "https://example.com/talkstack/events",
            }
        }
    )


class DeleteProjectIn(Strict):
    cascade: bool = False

    model_config = ConfigDict(json_schema_extra={"example": {"cascade": True}})


class AddWebhookIn(Strict):
    projectId: str
    webhookURL: WebhookUrl = Field(validation_alias=AliasChoices("webhookURL", "webhookUrl"))

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                "webhookURL": "https://example.com/talkstack/events",
            }
        }
    )


class ProjectIdIn(Strict):
    projectId: str

    model_config = ConfigDict(
        json_schema_extra={"example": {"projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b"}}
    )


class SetActiveAgentIn(Strict):
    projectId: str
    active_agent: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b",
                "active_agent": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
            }
        }
    )


class ProjectDataOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    data: ProjectOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully created project.",
                "status": "success",
                "data": PROJECT_EXAMPLE,
            }
        }
    )


class ProjectUpdateOut(ProjectDataOut):
    webhookSecret: str | None = Field(
        default=None,
        description="Only when this request gave the project its first webhook URL: the secret "
        "that signs deliveries (X-Talkstack-Signature). It is never shown again.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully updated project info.",
                "status": "success",
                "data": PROJECT_EXAMPLE,
                "webhookSecret": "whsec_hV2cT3m8y0B0mX3nq3m5x2Q9rJt7uP1kL4dZs6wE8aY",
            }
        }
    )


class ProjectListOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    data: list[ProjectOut]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully fetched projects.",
                "status": "success",
                "data": [PROJECT_EXAMPLE],
            }
        }
    )


class WebhookOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    webhookSecret: str | None = Field(
        default=None, description="Only the first time a webhook URL is set: shown once."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "added webhook url.",
                "status": "success",
                "webhookSecret": "whsec_hV2cT3m8y0B0mX3nq3m5x2Q9rJt7uP1kL4dZs6wE8aY",
            }
        }
    )


class ActiveAgentOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    active_agent: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "fetched active agent.",
                "status": "success",
                "active_agent": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
            }
        }
    )


class SetActiveAgentOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    project: ProjectOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "updated active agent successfully.",
                "status": "success",
                "project": {
                    **PROJECT_EXAMPLE,
                    "active_agent": "232ac42a-2ea0-4276-a5d8-43c8c9f7b857",
                },
            }
        }
    )


DELIVERY_EXAMPLE: dict[str, Any] = {
    "id": "5b0a3b8e-9f5c-4b7e-8a43-0c1d2e3f4a5b",
    "eventId": "evt_9f1c2d3e4b5a69788796a5b4c3d2e1f0",
    "event": "call.status",
    "callSid": "CA26e39c970fd416515799f5a165718be3",
    "status": "failed",
    "attempts": 2,
    "maxAttempts": 5,
    "lastStatusCode": 503,
    "lastError": "the receiver answered HTTP 503",
    "nextAttemptAt": "2025-03-10T05:30:41.120Z",
    "created_at": "2025-03-10T05:20:39.831Z",
    "updated_at": "2025-03-10T05:26:40.015Z",
}
DeliveryStatus = Literal["pending", "delivered", "failed", "dead"]


class DeliveryOut(BaseModel):
    id: str
    eventId: str = Field(description="The body's `id`, the same on every attempt and redelivery.")
    event: CallEvent
    callSid: str | None
    status: DeliveryStatus = Field(
        description="pending: not tried yet; delivered: the receiver answered 2xx; failed: the "
        "last attempt failed and another is scheduled (nextAttemptAt); dead: given up."
    )
    attempts: int = Field(description="Attempts in the current series (a redelivery starts one).")
    maxAttempts: int
    lastStatusCode: int | None = Field(
        description="What the receiver last answered; null when it gave no answer (timeout, "
        "connection refused, address refused by the SSRF guard)."
    )
    lastError: str | None
    nextAttemptAt: str | None
    created_at: str
    updated_at: str

    model_config = ConfigDict(json_schema_extra={"example": DELIVERY_EXAMPLE})

    @classmethod
    def of(cls, delivery: WebhookDelivery, *, max_attempts: int) -> DeliveryOut:
        return cls.model_validate(
            {
                "id": str(delivery.id),
                "eventId": delivery.event_id,
                "event": delivery.event,
                "callSid": delivery.call_sid,
                "status": delivery.status,
                "attempts": delivery.attempts,
                "maxAttempts": max_attempts,
                "lastStatusCode": delivery.last_status_code,
                "lastError": delivery.last_error,
                "nextAttemptAt": iso_ms(delivery.next_attempt_at),
                "created_at": iso_ms(delivery.created_at) or "",
                "updated_at": iso_ms(delivery.updated_at) or "",
            }
        )


class DeliveryListOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    deliveries: list[DeliveryOut]
    nextPageToken: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully fetched webhook deliveries.",
                "status": "success",
                "deliveries": [DELIVERY_EXAMPLE],
                "nextPageToken": "eyJwIjoiZGNlMDk0OTEifQ.q1w2e3r4t5y6u7i8o9p0aa",
            }
        }
    )


class DeliveryDataOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    delivery: DeliveryOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "webhook delivery queued again.",
                "status": "success",
                "delivery": {
                    **DELIVERY_EXAMPLE,
                    "status": "pending",
                    "attempts": 0,
                    "nextAttemptAt": "2025-03-10T06:02:11.402Z",
                },
            }
        }
    )


class RotatedSecretOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    webhookSecret: str = Field(description="The new secret: shown here once, never again.")
    previousSecretExpiresAt: str | None = Field(
        description="Until then deliveries carry a second v1 signature, made with the old "
        "secret; null when there was no old secret."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "rotated webhook secret.",
                "status": "success",
                "webhookSecret": "whsec_Rk3u8Q0xv2nYc5m1TzL7aB9dE4fG6hJ2kM8pS0wX3yZ",
                "previousSecretExpiresAt": "2025-03-11T05:20:39.831Z",
            }
        }
    )
