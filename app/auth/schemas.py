"""Request and response shapes of /auth/*, as Talkstack's docs print them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from app.models import User
from app.schemas import Strict
from app.timefmt import iso_ms


def _lower(v: str) -> str:
    return v.lower()


Email = Annotated[EmailStr, Field(max_length=254), AfterValidator(_lower)]
# 128 is a DoS cap: argon2 hashes whatever length it is handed.
Password = Annotated[str, Field(min_length=8, max_length=128)]
AnyPassword = Annotated[str, Field(min_length=1, max_length=128)]
Code = Annotated[str, Field(pattern=r"^\d{6}$", description="the 6-digit code from the email")]
OpaqueToken = Annotated[str, Field(min_length=1, max_length=512)]

# The user object: signup and login answer with it, and so does /user/set-active-project
# (app/user imports it from here; auth imports nothing of user).
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


_TOKENS_EXAMPLE = {
    "token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIzMTg5ZmJmZiJ9.c2lnbmF0dXJl",
    "refreshToken": "k3J9x0S2a6m1Q4VbZr8uYdPq5tWcLh7NnEoGfRiXsAw",
    "expirationTime": "2025-03-11T17:49:38.925Z",
}
_USER = USER_EXAMPLE


class SignupIn(Strict):
    email: Email
    password: Password
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    company_name: Annotated[
        str | None, StringConstraints(strip_whitespace=True, max_length=200)
    ] = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"email": "example@host.com", "password": "XXXXXXXXXX", "name": "John"}
        }
    )


class SignupOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    user: UserOut | None = Field(
        description="the new account (signupStatus 3); null for an email whose signup is "
        "pending verification (signupStatus 2), whose details are not shown to whoever asks"
    )
    signupStatus: int

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "User registered successfully",
                "status": "success",
                "user": {**_USER, "verified": False},
                "signupStatus": 3,
            }
        }
    )


class VerifyEmailIn(Strict):
    email: Email
    code: Code

    model_config = ConfigDict(
        json_schema_extra={"example": {"email": "example@host.com", "code": "123456"}}
    )


class VerifyEmailOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    userData: UserOut
    verificationStatus: int
    token: str
    refreshToken: str
    expirationTime: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "email verification successful.",
                "status": "success",
                "userData": _USER,
                "verificationStatus": 2,
                **_TOKENS_EXAMPLE,
            }
        }
    )


class EmailIn(Strict):
    email: Email

    model_config = ConfigDict(json_schema_extra={"example": {"email": "example@host.com"}})


class LoginIn(Strict):
    email: Email
    password: AnyPassword

    model_config = ConfigDict(
        json_schema_extra={"example": {"email": "example@host.com", "password": "XXXXXXXXXX"}}
    )


class LoginOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    token: str
    refreshToken: str
    expirationTime: str
    user: UserOut
    loginStatus: int

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "successfully logged in.",
                "status": "success",
                **_TOKENS_EXAMPLE,
                "user": _USER,
                "loginStatus": 7,
            }
        }
    )


class RefreshIn(Strict):
    refreshToken: OpaqueToken

    model_config = ConfigDict(
        json_schema_extra={"example": {"refreshToken": _TOKENS_EXAMPLE["refreshToken"]}}
    )


class RefreshOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    token: str
    refreshToken: str
    resfreshToken: str = Field(description="Talkstack's documented misspelling; same value")
    expirationTime: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "token refreshed.",
                "status": "success",
                **_TOKENS_EXAMPLE,
                "resfreshToken": _TOKENS_EXAMPLE["refreshToken"],
            }
        }
    )


class ChangePasswordIn(Strict):
    oldPassword: AnyPassword
    newPassword: Password

    model_config = ConfigDict(
        json_schema_extra={"example": {"oldPassword": "Old@12345", "newPassword": "New@12345"}}
    )


class ResetPasswordIn(Strict):
    token: OpaqueToken
    newPassword: Password

    model_config = ConfigDict(
        json_schema_extra={"example": {"token": "xxxxxxxxxxxxxxxx", "newPassword": "abc@12345"}}
    )
