"""/phone-number/*: look up assigned numbers and assign Twilio numbers to agents."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import CtxDep, CurrentUser, SessionDep
from app.ownership import owned_agent, owned_project
from app.phone_number import service
from app.phone_number.schemas import AddNumberIn, AddNumberOut, LookupIn, LookupOut, PhoneNumberOut
from app.schemas import error_responses

router = APIRouter(prefix="/phone-number", tags=["phone-number"])


@router.post("", response_model=LookupOut, responses=error_responses(401, 404))
async def get_phone_number(body: LookupIn, user: CurrentUser, session: SessionDep) -> LookupOut:
    """A number by phoneNumberId, agentId or projectId (that precedence); a project gives all."""
    project = None
    if body.projectId and not body.phoneNumberId and not body.agentId:
        project = await owned_project(session, user=user, project_id=body.projectId)
    number, numbers = await service.lookup(
        session,
        user=user,
        phone_number_id=body.phoneNumberId,
        agent_id=body.agentId,
        project=project,
    )
    return LookupOut(
        message="Phone number details fetched successfully.",
        data=PhoneNumberOut.of(number),
        numbers=[PhoneNumberOut.of(n) for n in numbers] if numbers is not None else None,
    )


@router.post(
    "/add-number", response_model=AddNumberOut, responses=error_responses(401, 404, 409, 502, 503)
)
async def add_number(
    body: AddNumberIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> AddNumberOut:
    """Assign a number of your Twilio account (or a verified caller id) to an agent."""
    project, agent = await owned_agent(
        session, user=user, project_id=body.projectId, agent_id=body.agentId
    )
    number = await service.assign_number(
        ctx, session, user=user, project=project, agent=agent, raw=body.e164
    )
    return AddNumberOut(
        message="PhoneNumber assigned successfully.", data=PhoneNumberOut.of(number)
    )
