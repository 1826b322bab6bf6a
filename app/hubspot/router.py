"""/hubspot/*: connect a project's HubSpot account, read its state, disconnect it."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import CtxDep, CurrentUser, SessionDep
from app.hubspot import service
from app.hubspot.schemas import ConnectIn, HubSpotOut, HubSpotProjectIn, HubSpotStatusOut
from app.ownership import owned_project
from app.schemas import error_responses

router = APIRouter(prefix="/hubspot", tags=["hubspot"])


@router.post("/connect", response_model=HubSpotStatusOut, responses=error_responses(401, 404, 502))
async def connect_hubspot(
    body: ConnectIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> HubSpotStatusOut:
    """Connect a HubSpot private-app token: checked with HubSpot, stored encrypted."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    connection = await service.connect(ctx, session, project=project, access_token=body.accessToken)
    return HubSpotStatusOut(message="connected HubSpot.", hubspot=HubSpotOut.of(connection))


@router.post("/status", response_model=HubSpotStatusOut, responses=error_responses(401, 404))
async def get_hubspot_status(
    body: HubSpotProjectIn, user: CurrentUser, session: SessionDep
) -> HubSpotStatusOut:
    """Whether the project's HubSpot is connected, its portal id and the last sync's result."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    connection = await service.get_connection(session, project.id)
    return HubSpotStatusOut(message="fetched HubSpot status.", hubspot=HubSpotOut.of(connection))


@router.post("/disconnect", response_model=HubSpotStatusOut, responses=error_responses(401, 404))
async def disconnect_hubspot(
    body: HubSpotProjectIn, user: CurrentUser, session: SessionDep
) -> HubSpotStatusOut:
    """Forget the project's HubSpot token; calls are no longer logged there."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    await service.disconnect(session, project=project)
    return HubSpotStatusOut(message="disconnected HubSpot.", hubspot=HubSpotOut.of(None))
