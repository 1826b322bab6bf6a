"""The /hubspot/* bodies (ours: Talkstack's HubSpot page is lost; docs/api/hubspot.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.hubspot.service import ConnectionStatus
from app.models import HubSpotConnection
from app.models.hubspot_connection import SyncResult
from app.schemas import Strict
from app.timefmt import iso_ms

PROJECT_ID = "dce09491-e3c8-4c0b-bf01-c8ef8729088b"
HUBSPOT_EXAMPLE: dict[str, Any] = {
    "connected": True,
    "state": "connected",
    "portalId": 62515,
    "connectedAt": "2026-11-26T01:02:03.456Z",
    "lastSync": {
        "at": "2026-11-26T01:13:42.120Z",
        "result": "success",
        "callSid": "CA26e39c970fd416515799f5a165718be3",
        "message": None,
    },
}


class ConnectIn(Strict):
    projectId: str
    # Printable ASCII: it travels in an HTTP header.
    accessToken: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$"
        ),
    ] = Field(
        description="The access token of a HubSpot private app with the scopes "
        "crm.objects.contacts.read and crm.objects.contacts.write. Checked with HubSpot, "
        "stored encrypted, never returned."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "projectId": PROJECT_ID,
                "accessToken": "pat-na1-11111111-2222-3333-4444-555555555555",
            }
        }
    )


class HubSpotProjectIn(Strict):
    projectId: str

    model_config = ConfigDict(json_schema_extra={"example": {"projectId": PROJECT_ID}})


class LastSyncOut(BaseModel):
    at: str
    result: Literal["success", "error"]
    callSid: str | None = Field(description="The call this result is about.")
    message: str | None = Field(description="What went wrong, when result is error.")


class HubSpotOut(BaseModel):
    connected: bool
    state: Literal["connected", "broken", "not_connected"] = Field(
        description="broken: HubSpot refused the stored token (revoked); nothing is sent "
        "until the project connects again."
    )
    portalId: int | None = Field(description="The HubSpot account (hub) id.")
    connectedAt: str | None
    lastSync: LastSyncOut | None

    @classmethod
    def of(cls, connection: HubSpotConnection | None) -> HubSpotOut:
        if connection is None:
            return cls(
                connected=False,
                state="not_connected",
                portalId=None,
                connectedAt=None,
                lastSync=None,
            )
        last = None
        if connection.last_sync_at is not None and connection.last_sync_result in tuple(SyncResult):
            last = LastSyncOut(
                at=iso_ms(connection.last_sync_at) or "",
                result=(
                    "success" if connection.last_sync_result == SyncResult.SUCCESS else "error"
                ),
                callSid=connection.last_sync_call_sid,
                message=connection.last_sync_error,
            )
        state: Literal["connected", "broken"] = (
            "connected" if connection.status == ConnectionStatus.CONNECTED else "broken"
        )
        return cls(
            connected=state == "connected",
            state=state,
            portalId=connection.portal_id,
            connectedAt=iso_ms(connection.connected_at),
            lastSync=last,
        )


class HubSpotStatusOut(BaseModel):
    message: str
    status: Literal["success"] = "success"
    hubspot: HubSpotOut

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "message": "fetched HubSpot status.",
                "status": "success",
                "hubspot": HUBSPOT_EXAMPLE,
            }
        }
    )
