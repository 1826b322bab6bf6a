"""The project object (CONTRACT.md §4)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.models import Project
from app.timefmt import iso_ms

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
    def of(cls, project: Project) -> ProjectOut:
        return cls(
            id=str(project.id),
            name=project.name,
            description=project.description,
            user_id=str(project.user_id),
            status="ACTIVE",
            is_deleted=project.is_deleted,
            call_status_webhook=project.call_status_webhook,
            active_agent=None,
            created_at=iso_ms(project.created_at) or "",
            updated_at=iso_ms(project.updated_at) or "",
        )
