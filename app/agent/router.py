"""/agent/*: create, read, update, delete and list a project's agents."""

from __future__ import annotations

from fastapi import APIRouter

from app.agent import service
from app.agent.schemas import (
    AgentDataOut,
    AgentOut,
    AgentRefIn,
    CreateAgentIn,
    UpdateAgentIn,
    UpdatedAgentOut,
)
from app.deps import CtxDep, CurrentUser, SessionDep
from app.ownership import OwnedProject, owned_agent, owned_project
from app.phone_number.service import number_of_agent
from app.schemas import MessageOut, error_responses

router = APIRouter(prefix="/agent", tags=["agent"])


@router.post(
    "/create-agent", response_model=AgentDataOut, responses=error_responses(401, 404, 409, 502, 503)
)
async def create_agent(
    body: CreateAgentIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> AgentDataOut:
    """Create an agent; with phoneNumber, assign that Twilio number to it as add-number does."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    agent, number = await service.create_agent(
        ctx,
        session,
        user=user,
        project=project,
        fields=body.model_dump(exclude={"projectId", "phoneNumber"}),
        phone_number=body.phoneNumber,
    )
    out = AgentOut.of(agent, number)
    out.webhookSecret = service.ensure_signing_secret(project, agent)
    return AgentDataOut(message="successfully created agent.", data=out)


@router.post("", response_model=AgentOut, responses=error_responses(401, 404))
async def get_agent(body: AgentRefIn, user: CurrentUser, session: SessionDep) -> AgentOut:
    """One agent of one of your projects (the bare agent object)."""
    _, agent = await owned_agent(
        session, user=user, project_id=body.projectId, agent_id=body.agentId
    )
    return AgentOut.of(agent, await number_of_agent(session, agent.id))


@router.put("", response_model=UpdatedAgentOut, responses=error_responses(401, 404, 409, 502, 503))
async def update_agent(
    body: UpdateAgentIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> UpdatedAgentOut:
    """Change any of the agent's writable fields (at least one); returns the bare agent."""
    project, agent = await owned_agent(
        session, user=user, project_id=body.projectId, agent_id=body.agentId
    )
    changes = body.changes()
    phone = changes.pop("phoneNumber", None)
    await service.update_agent(
        ctx, session, user=user, project=project, agent=agent, changes=changes, phone_number=phone
    )
    out = AgentOut.of(agent, await number_of_agent(session, agent.id))
    out.webhookSecret = service.ensure_signing_secret(project, agent)
    return UpdatedAgentOut(**out.model_dump(), agentId=out.id)


@router.delete("", response_model=MessageOut, responses=error_responses(401, 404, 502))
async def delete_agent(
    body: AgentRefIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> MessageOut:
    """Delete an agent: its number is released and it stops being the active agent."""
    project, agent = await owned_agent(
        session, user=user, project_id=body.projectId, agent_id=body.agentId
    )
    await service.delete_agent(ctx, session, project=project, agent=agent)
    return MessageOut(message="Agent Deleted")


@router.get("/{project_id}", response_model=list[AgentOut], responses=error_responses(401, 404))
async def list_agents(project: OwnedProject, session: SessionDep) -> list[AgentOut]:
    """Every agent of the project (a bare array; [] when there are none)."""
    return [AgentOut.of(a, n) for a, n in await service.list_agents(session, project=project)]
