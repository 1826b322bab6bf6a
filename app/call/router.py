"""/call/*: place a call, read one, list the history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from app.call import history, idempotency, service
from app.call.analysis import analysis_on_demand
from app.call.schemas import (
    AnalysisIn,
    AnalysisOut,
    CallOut,
    GetCallIn,
    HistoryIn,
    HistoryOut,
    MakeCallIn,
    MakeCallOut,
    PlacedCallOut,
)
from app.deps import CtxDep, CurrentUser, SessionDep
from app.errors import AppError
from app.ownership import owned_agent, owned_project
from app.pagination import PageTokens
from app.schemas import error_responses

router = APIRouter(prefix="/call", tags=["call"])

_SCOPE = "call.makeCall"


@router.post(
    "/makeCall", response_model=MakeCallOut, responses=error_responses(401, 404, 409, 502, 503)
)
async def make_call(
    body: MakeCallIn,
    user: CurrentUser,
    ctx: CtxDep,
    session: SessionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Retrying with the same key and body returns the first answer (24 h) "
            "instead of dialing again.",
        ),
    ] = None,
) -> Any:
    """Call `number` with the agent; its prompt is rendered with dynamicVariables."""
    project, agent = await owned_agent(
        session, user=user, project_id=body.projectId, agent_id=body.agentId
    )
    prepared = await service.prepare_call(
        ctx,
        session,
        user=user,
        project=project,
        agent=agent,
        number=body.number,
        variables=body.variables(),
        hubspot_contact_id=body.hubspotContactId,
    )
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    if key is not None:
        digest = idempotency.request_hash(body.model_dump(mode="json"))
        replay = await idempotency.begin(
            ctx.sessionmaker, user=user, scope=_SCOPE, key=key, digest=digest
        )
        if replay is not None:
            return JSONResponse(replay.body, status_code=replay.status_code)
    try:
        call = await service.place_call(ctx, prepared)
    except AppError as exc:
        if key is not None:  # Twilio refused: the same answer for a retry, not a second dial
            await idempotency.finish(
                ctx.sessionmaker, user=user, scope=_SCOPE, key=key,
                status_code=exc.status_code, body=exc.body(),
            )  # fmt: skip
        raise
    except BaseException:
        if key is not None:
            await idempotency.release(ctx.sessionmaker, user=user, scope=_SCOPE, key=key)
        raise
    assert call.call_sid is not None
    out = MakeCallOut(
        message="call made successfully.",
        call=PlacedCallOut(call_id=call.call_sid, to=call.to_number, from_=call.from_number,
                           status=call.status),
    )  # fmt: skip
    if key is not None:
        await idempotency.finish(
            ctx.sessionmaker, user=user, scope=_SCOPE, key=key, status_code=200,
            body=out.model_dump(by_alias=True),
        )  # fmt: skip
    return out


@router.post("", response_model=CallOut, responses=error_responses(401, 404))
async def get_call(body: GetCallIn, user: CurrentUser, session: SessionDep) -> CallOut:
    """One call by its SID (`sid` or `callSid`): the bare call object."""
    project = None
    if body.projectId is not None:
        project = await owned_project(session, user=user, project_id=body.projectId)
    call = await service.get_call(session, user=user, sid=body.sid, project=project)
    return CallOut.of(call)


@router.post("/get-call-history", response_model=HistoryOut, responses=error_responses(401, 404))
async def get_call_history(
    body: HistoryIn,
    user: CurrentUser,
    ctx: CtxDep,
    session: SessionDep,
    to: Annotated[str | None, Query(max_length=40)] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    startTime: Annotated[str | None, Query(max_length=10)] = None,
    startTimeBefore: Annotated[str | None, Query(max_length=10)] = None,
    startTimeAfter: Annotated[str | None, Query(max_length=10)] = None,
    endTime: Annotated[str | None, Query(max_length=10)] = None,
    endTimeBefore: Annotated[str | None, Query(max_length=10)] = None,
    endTimeAfter: Annotated[str | None, Query(max_length=10)] = None,
) -> HistoryOut:
    """The project's calls, newest first, pageSize at a time; pass nextPageToken for more."""
    project = await owned_project(session, user=user, project_id=body.projectId)
    filters = history.parse_filters(
        {
            "to": to, "from": from_, "status": status, "startTime": startTime,
            "startTimeBefore": startTimeBefore, "startTimeAfter": startTimeAfter,
            "endTime": endTime, "endTimeBefore": endTimeBefore, "endTimeAfter": endTimeAfter,
        }
    )  # fmt: skip
    calls, token = await history.page(
        session,
        PageTokens(ctx.signer.derive_key(b"call-history-page")),
        project=project,
        filters=filters,
        page_size=body.pageSize,
        page_token=body.pageToken,
    )
    return HistoryOut(
        message="successfully fetched call history.",
        calls=[CallOut.of(c) for c in calls],
        nextPageToken=token,
    )


@router.post("/analysis", response_model=AnalysisOut, responses=error_responses(401, 404, 409, 502))
async def call_analysis(
    body: AnalysisIn, user: CurrentUser, ctx: CtxDep, session: SessionDep
) -> AnalysisOut:
    """Answer questions about a finished call from its transcript (none: the agent's own).

    Boolean answers are "Yes"/"No", Number a number, Selector one of its options. Asking the
    same questions again returns the stored answer.
    """
    project = None
    if body.projectId is not None:
        project = await owned_project(session, user=user, project_id=body.projectId)
    call = await service.get_call(session, user=user, sid=body.sid, project=project)
    questions = [q.model_dump() for q in body.questions] if body.questions else None
    result = await analysis_on_demand(ctx, call, questions)
    return AnalysisOut.model_validate({"message": "successfully analysed the call.",
                                       "analysis": result})  # fmt: skip
