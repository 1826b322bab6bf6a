"""The user object and the /user/* envelopes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.auth.schemas import USER_EXAMPLE, UserOut
from app.project.schemas import PROJECT_EXAMPLE, ProjectOut
from app.schemas import Strict


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
