"""/user/*: API keys and the active project."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth.schemas import UserOut
from app.deps import BearerUser, CurrentCaller, CurrentUser, SessionDep
from app.ownership import owned_project
from app.project.schemas import ProjectOut
from app.schemas import error_responses
from app.user import service
from app.user.schemas import (
    ActiveProjectOut,
    ApiKeyOut,
    SetActiveProjectIn,
    SetActiveProjectOut,
)

router = APIRouter(prefix="/user", tags=["user"])


@router.get("/generate-apikey", response_model=ApiKeyOut, responses=error_responses(401))
async def generate_apikey(user: BearerUser, session: SessionDep) -> ApiKeyOut:
    """Generate a new API key (Bearer token only); the previous key stops working at once."""
    key = await service.generate_api_key(session, user=user)
    return ApiKeyOut(message="API key successfully generated and updated.", apiKey=key)


@router.post(
    "/set-active-project", response_model=SetActiveProjectOut, responses=error_responses(401, 404)
)
async def set_active_project(
    body: SetActiveProjectIn, user: CurrentUser, session: SessionDep
) -> SetActiveProjectOut:
    """Make one of your projects the active one."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    await service.set_active_project(session, user=user, project=project)
    return SetActiveProjectOut(
        message=f"successfully set project with id {project.id} active.",
        userData=UserOut.of(user),
        projectData=ProjectOut.of(project),
    )


@router.get(
    "/get-active-project", response_model=ActiveProjectOut, responses=error_responses(401, 404)
)
async def get_active_project(caller: CurrentCaller) -> ActiveProjectOut:
    """The active project; 404 when none is set."""
    # No session: the credential lookup brought the active project along.
    project = service.get_active_project(caller)
    return ActiveProjectOut(
        message="fetched active project data.", projectData=ProjectOut.of(project)
    )
