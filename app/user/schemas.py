"""The user object and the /user/* envelopes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.models import User
from app.project.schemas import PROJECT_EXAMPLE, ProjectOut
from app.schemas import Strict
from app.timefmt import iso_ms

USER_EXAMPLE: dict[str, Any] = {
    "id": "3189fbff-f9fa-4920-b95c-63387b1204a4",
    "name": "John",
    "email": "example@host.com",
    "verified": True,
    "active_project": None,
    "company_name": None,
    "created_at": "2025-03-10T05:20:39.831Z",
    "updated_at": "2025-03-10T05:20:39.831Z",
}


class UserOut(BaseModel):
    id: str
    name: str
    email: str
    verified: bool
    active_project: str | None
    company_name: str | None
    created_at: str
    updated_at: str

    model_config = ConfigDict(json_schema_extra={"example": USER_EXAMPLE})

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=str(user.id),
            name=user.name,
            email=user.email,
            verified=user.verified,
            active_project=str(user.active_project_id) if user.active_project_id else None,
            company_name=user.company_name,
            created_at=iso_ms(user.created_at) or "",
            updated_at=iso_ms(user.updated_at) or "",
        )


class ApiKeyOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    apiKey: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "API key successfully generated and updated.",
                "status": "success",
                "apiKey": "54447c25f46cf13f54915e4465bd443b4a0b98c5623cfc68e1393223984bf96c",
            }
        }
    )


class SetActiveProjectIn(Strict):
    projectId: str

    model_config = ConfigDict(
        json_schema_extra={"example": {"projectId": "dce09491-e3c8-4c0b-bf01-c8ef8729088b"}}
    )


class SetActiveProjectOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    userData: UserOut
    projectData: ProjectOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": f"successfully set project with id {PROJECT_EXAMPLE['id']} active.",
                "status": "success",
                "userData": {**USER_EXAMPLE, "active_project": PROJECT_EXAMPLE["id"]},
                "projectData": PROJECT_EXAMPLE,
            }
        }
    )


class ActiveProjectOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    projectData: ProjectOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "fetched active project data.",
                "status": "success",
                "projectData": PROJECT_EXAMPLE,
            }
        }
    )
