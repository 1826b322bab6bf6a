"""/project/*: projects, their call-status webhook and their active agent."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query

from app.deps import CtxDep, CurrentUser, SessionDep
from app.integrations.webhooks.sender import MAX_ATTEMPTS, CallEvent
from app.ownership import OwnedProject, owned_agent, owned_project
from app.pagination import PageTokens
from app.project import deliveries, service
from app.project.schemas import (
    ActiveAgentOut,
    AddWebhookIn,
    CreateProjectIn,
    DeleteProjectIn,
    DeliveryDataOut,
    DeliveryListOut,
    DeliveryOut,
    DeliveryStatus,
    ProjectDataOut,
    ProjectIdIn,
    ProjectListOut,
    ProjectOut,
    ProjectUpdateOut,
    RotatedSecretOut,
    SetActiveAgentIn,
    SetActiveAgentOut,
    UpdateProjectIn,
    WebhookOut,
)
from app.schemas import MessageOut, error_responses
from app.timefmt import iso_ms

router = APIRouter(prefix="/project", tags=["project"])


@router.post("/create-project", response_model=ProjectDataOut, responses=error_responses(401, 409))
async def create_project(
    body: CreateProjectIn, user: CurrentUser, session: SessionDep
) -> ProjectDataOut:
    """Create a project; names are unique among your live projects."""
    project = await service.create_project(
        session, user=user, name=body.name, description=body.description
    )
    return ProjectDataOut(message="successfully created project.", data=ProjectOut.of(project))


@router.get("", response_model=ProjectListOut, responses=error_responses(401))
async def list_projects(user: CurrentUser, session: SessionDep) -> ProjectListOut:
    """Your live projects, newest first."""
    projects = await service.list_projects(session, user=user)
    return ProjectListOut(
        message="successfully fetched projects.", data=[ProjectOut.of(p) for p in projects]
    )


@router.post(
    "/call-status/add-webhookurl", response_model=WebhookOut, responses=error_responses(401, 404)
)
async def add_webhook_url(
    body: AddWebhookIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> WebhookOut:
    """Set the URL that receives signed call events; the first time, returns webhookSecret."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    secret = await service.set_webhook(ctx, project, body.webhookURL)
    await session.flush()
    return WebhookOut(message="added webhook url.", webhookSecret=secret)


@router.post("/active-agent", response_model=ActiveAgentOut, responses=error_responses(401, 404))
async def get_active_agent(
    body: ProjectIdIn, user: CurrentUser, session: SessionDep
) -> ActiveAgentOut:
    """The project's active (default) agent id; 404 when none is set."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    agent_id = await service.get_active_agent(project)
    return ActiveAgentOut(message="fetched active agent.", active_agent=str(agent_id))


@router.patch(
    "/active-agent", response_model=SetActiveAgentOut, responses=error_responses(401, 404)
)
async def set_active_agent(
    body: SetActiveAgentIn, user: CurrentUser, session: SessionDep
) -> SetActiveAgentOut:
    """Make one of the project's agents its active agent."""
    project, agent = await owned_agent(
        session, user=user, project_id=body.projectId, agent_id=body.active_agent
    )
    project = await service.set_active_agent(session, project=project, agent=agent)
    return SetActiveAgentOut(
        message="updated active agent successfully.", project=ProjectOut.of(project)
    )


@router.patch(
    "/active-agent/{agent_id}", response_model=MessageOut, responses=error_responses(401, 404)
)
async def remove_active_agent(agent_id: str, user: CurrentUser, session: SessionDep) -> MessageOut:
    """Stop using this agent as its project's active agent."""
    await service.remove_active_agent(session, user=user, agent_id=agent_id)
    return MessageOut(message="Removed active agent from project successfully.")


@router.get("/{project_id}", response_model=ProjectDataOut, responses=error_responses(401, 404))
async def get_project(project: OwnedProject) -> ProjectDataOut:
    """One of your projects."""
    return ProjectDataOut(message="successfully fetched project data.", data=ProjectOut.of(project))


@router.put(
    "/{project_id}", response_model=ProjectUpdateOut, responses=error_responses(401, 404, 409)
)
async def update_project(
    body: UpdateProjectIn,
    project: OwnedProject,
    user: CurrentUser,
    ctx: CtxDep,
    session: SessionDep,
) -> ProjectUpdateOut:
    """Change name, description or webhookUrl (alias webhookURL); at least one."""
    secret = await service.update_project(
        ctx,
        session,
        user=user,
        project=project,
        name=body.name,
        description=body.description,
        webhook_url=body.webhookUrl,
    )
    return ProjectUpdateOut(
        message="successfully updated project info.",
        data=ProjectOut.of(project),
        webhookSecret=secret,
    )


@router.delete(
    "/{project_id}", response_model=MessageOut, responses=error_responses(401, 404, 409, 502)
)
async def delete_project(
    project: OwnedProject,
    user: CurrentUser,
    ctx: CtxDep,
    session: SessionDep,
    body: Annotated[DeleteProjectIn | None, Body()] = None,
) -> MessageOut:
    """Soft-delete a project; with {"cascade": true} its agents and numbers go too."""
    await service.delete_project(
        ctx, session, user=user, project=project, cascade=bool(body and body.cascade)
    )
    return MessageOut(message="successfully deleted project.")


@router.get(
    "/{project_id}/webhook-deliveries",
    response_model=DeliveryListOut,
    responses=error_responses(401, 404),
)
async def list_webhook_deliveries(
    project: OwnedProject,
    ctx: CtxDep,
    session: SessionDep,
    pageSize: Annotated[int, Query(ge=1, le=100)] = 20,
    pageToken: Annotated[str | None, Query(max_length=1000)] = None,
    event: Annotated[CallEvent | None, Query()] = None,
    status: Annotated[DeliveryStatus | None, Query()] = None,
) -> DeliveryListOut:
    """The project's webhook deliveries, newest first, pageSize at a time; pass nextPageToken."""
    rows, token = await deliveries.list_deliveries(
        session,
        PageTokens(ctx.signer.derive_key(b"webhook-deliveries-page")),
        project=project,
        filters=deliveries.DeliveryFilters(event=event, status=status),
        page_size=pageSize,
        page_token=pageToken,
    )
    return DeliveryListOut(
        message="successfully fetched webhook deliveries.",
        deliveries=[DeliveryOut.of(d, max_attempts=MAX_ATTEMPTS) for d in rows],
        nextPageToken=token,
    )


@router.post(
    "/{project_id}/webhook-deliveries/{delivery_id}/redeliver",
    response_model=DeliveryDataOut,
    responses=error_responses(401, 404, 409),
)
async def redeliver_webhook(
    project: OwnedProject, delivery_id: uuid.UUID, session: SessionDep
) -> DeliveryDataOut:
    """Send a delivery's event again: same id and body, freshly signed, five new tries."""
    delivery = await deliveries.redeliver(session, project=project, delivery_id=delivery_id)
    return DeliveryDataOut(
        message="webhook delivery queued again.",
        delivery=DeliveryOut.of(delivery, max_attempts=MAX_ATTEMPTS),
    )


@router.post(
    "/{project_id}/webhook-secret/rotate",
    response_model=RotatedSecretOut,
    responses=error_responses(401, 404, 409),
)
async def rotate_webhook_secret(project: OwnedProject, session: SessionDep) -> RotatedSecretOut:
    """A new webhook secret, shown once; the old one also signs for 24 hours."""
    secret, expires = await deliveries.rotate_webhook_secret(session, project=project)
    return RotatedSecretOut(
        message="rotated webhook secret.",
        webhookSecret=secret,
        previousSecretExpiresAt=iso_ms(expires),
    )
