"""Shapes shared by every domain: the error body, the success envelope, OpenAPI responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    message: str
    status: Literal["error"] = "error"
    code: str
    errors: list[FieldError] | None = None

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "message": "Invalid request: email is required.",
                "status": "error",
                "code": "VALIDATION_ERROR",
                "errors": [{"field": "email", "message": "is required"}],
            }
        },
    )


class MessageOut(BaseModel):
    message: str
    status: Literal["success"] = "success"

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"message": "successfully updated password.", "status": "success"}
        }
    )


_DESCRIPTIONS = {
    400: "Invalid input (missing, malformed or out-of-range fields, or malformed JSON)",
    401: "Missing, invalid or expired credentials",
    403: "Authenticated but not allowed",
    404: "Not found, or not yours",
    409: "Conflict with the current state",
    413: "Upload too large",
    429: "Rate limited; see Retry-After",
    500: "Internal error",
    502: "An upstream service failed",
    503: "An upstream service is not configured",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer, all with ErrorBody."""
    return {c: {"model": ErrorBody, "description": _DESCRIPTIONS[c]} for c in (400, 500, *codes)}


class Strict(BaseModel):
    """Base for request bodies. Unknown fields are ignored, so a body can never set a field
    its model does not name (user_id, id, status...)."""

    model_config = ConfigDict(populate_by_name=True)


NonEmpty = Field(min_length=1)
