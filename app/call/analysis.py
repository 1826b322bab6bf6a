"""Post-call analysis: a summary, the callee's sentiment and typed answers to questions.

The LLM answers with structured output (a strict JSON schema built from the questions), and
every answer is checked again here, so a Boolean is always "Yes"/"No", a Number a number and a
Selector one of its options, whatever server sits behind LLM_BASE_URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.call import status as states
from app.call.schemas import CallOut
from app.context import AppContext
from app.errors import Conflict, UpstreamError
from app.hubspot import jobs as hubspot_jobs
from app.integrations.llm import ChatModel, LLMError, Message
from app.integrations.webhooks.sender import enqueue_call_event
from app.jobs.worker import RetryLater
from app.models import Agent, Call, CallAnalysis, Project

log = logging.getLogger("talkstack.analysis")

ANALYZE_JOB = "call.analyze"
SENTIMENTS = ("positive", "neutral", "negative")
# The job is queued once the call's status is final (app/call/lifecycle.py). A job queued by an
# earlier version, at the conversation's end, may find it not yet final: it waits this many tries.
FINAL_STATUS_WAIT_ATTEMPTS = 4

Question = dict[str, Any]


class LLMUnavailable(UpstreamError):
    code = "LLM_UNAVAILABLE"


def questions_key(
    questions: Sequence[Question], model: str, success_criteria: str | None = None
) -> str:
    asked: dict[str, Any] = {"model": model, "questions": list(questions)}
    if success_criteria:
        asked["successCriteria"] = success_criteria  # absent: the keys stored before stay valid
    canonical = json.dumps(asked, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _answer_schema(question: Question) -> dict[str, Any]:
    kind = question["type"]
    description = question["question"]
    if kind == "Boolean":
        return {"type": "string", "enum": ["Yes", "No"], "description": description}
    if kind == "Number":
        return {"type": "number", "description": description}
    if kind == "Selector":
        return {"type": "string", "enum": list(question["options"]), "description": description}
    return {"type": "string", "description": description}


def answer_schema(
    questions: Sequence[Question], success_criteria: str | None = None
) -> dict[str, Any]:
    """The JSON schema of the analysis: strict (every property required, nothing else)."""
    answers = {f"q{i + 1}": _answer_schema(q) for i, q in enumerate(questions)}
    properties: dict[str, Any] = {
        "summary": {"type": "string", "description": "Two or three sentences."},
        "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
    }
    if success_criteria:
        properties["successful"] = {
            "type": "boolean",
            "description": "Whether the call met the success criteria.",
        }
    properties["answers"] = {
        "type": "object",
        "properties": answers,
        "required": list(answers),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def render_transcript(transcript: Sequence[dict[str, Any]]) -> str:
    lines = []
    for turn in transcript:
        if turn.get("role") == "user":
            if turn.get("dtmf"):
                lines.append(f"Callee: (pressed {turn['dtmf']} on the keypad)")
            else:
                lines.append(f"Callee: {turn.get('text', '')}")
        elif turn.get("role") == "tool":
            lines.append(f"(The agent used {turn.get('name', 'a tool')}: {turn.get('result', '')})")
        else:
            cut = " (interrupted by the callee)" if turn.get("interrupted") else ""
            lines.append(f"Agent{cut}: {turn.get('text', '')}")
    return "\n".join(lines)


def analysis_messages(
    transcript: Sequence[dict[str, Any]],
    questions: Sequence[Question],
    success_criteria: str | None = None,
) -> list[Message]:
    asked = "\n".join(
        f"q{i + 1} ({q['type']}): {q['question']}"
        + (f" Options: {'; '.join(q['options'])}" if q.get("options") else "")
        for i, q in enumerate(questions)
    )
    instructions = (
        "You analyse the transcript of a phone call between an AI agent and a callee. Write "
        "a short summary of the call, judge the callee's sentiment, and answer each question "
        "from the transcript alone. Boolean questions are answered Yes or No; Number questions "
        "with a number (0 when the call gives none); Selector questions with exactly one of "
        "their options."
    )
    if success_criteria:
        instructions += (
            " Judge whether the call was successful: true only if it met the success "
            "criteria the user gives."
        )
    content = f"Transcript:\n{render_transcript(transcript)}"
    if success_criteria:
        content += f"\n\nSuccess criteria:\n{success_criteria}"
    if asked:
        content += f"\n\nQuestions:\n{asked}"
    return [{"role": "system", "content": instructions}, {"role": "user", "content": content}]


def _answer(question: Question, raw: Any) -> Any:
    kind = question["type"]
    if kind == "Boolean":
        if isinstance(raw, bool):
            return "Yes" if raw else "No"
        text = str(raw).strip().lower()
        if text in ("yes", "true", "y"):
            return "Yes"
        if text in ("no", "false", "n"):
            return "No"
    elif kind == "Number":
        if isinstance(raw, bool):
            raise LLMError(f"not a number for {question['question']!r}")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            pass
        else:
            if math.isfinite(number):
                return int(number) if number.is_integer() else number
    elif kind == "Selector":
        options = list(question["options"])
        if raw in options:
            return raw
        matches = [o for o in options if o.strip().lower() == str(raw).strip().lower()]
        if len(matches) == 1:
            return matches[0]
    elif isinstance(raw, str):
        return raw.strip()
    raise LLMError(
        f"the LLM's answer {raw!r} does not fit {kind} question {question['question']!r}"
    )


def shape(
    raw: dict[str, Any], questions: Sequence[Question], success_criteria: str | None = None
) -> dict[str, Any]:
    """The analysis as the API shows it, with every answer checked against its question."""
    sentiment = str(raw.get("sentiment", "")).strip().lower()
    if sentiment not in SENTIMENTS:
        raise LLMError(f"unknown sentiment {raw.get('sentiment')!r}")
    summary = raw.get("summary")
    if not isinstance(summary, str):
        raise LLMError("the analysis has no summary")
    given = raw.get("answers")
    if not isinstance(given, dict):
        given = {}
    answers = []
    for i, q in enumerate(questions):
        key = f"q{i + 1}"
        if key not in given:
            raise LLMError(f"the LLM did not answer {q['question']!r}")
        answers.append(
            {"question": q["question"], "type": q["type"], "answer": _answer(q, given[key])}
        )
    result: dict[str, Any] = {"summary": summary.strip(), "sentiment": sentiment}
    if success_criteria:
        successful = raw.get("successful")
        if not isinstance(successful, bool):
            raise LLMError(f"the LLM's success verdict {successful!r} is not true or false")
        result["successful"] = successful
    result["answers"] = answers
    return result


async def analyse(
    llm: ChatModel,
    transcript: Sequence[dict[str, Any]],
    questions: Sequence[Question],
    success_criteria: str | None = None,
) -> dict[str, Any]:
    raw = await llm.structured(
        analysis_messages(transcript, questions, success_criteria),
        name="call_analysis",
        schema=answer_schema(questions, success_criteria),
    )
    return shape(raw, questions, success_criteria)


def has_conversation(transcript: Sequence[dict[str, Any]]) -> bool:
    return any(turn.get("role") == "user" for turn in transcript)


# -- after a call: the background job -------------------------------------------------------


async def run_analysis_job(ctx: AppContext, job: Any) -> None:
    """Answer the agent's questions into the call's `data`, then tell the project's webhook."""
    call_id = uuid.UUID(job.payload["call_id"])
    async with ctx.sessionmaker() as session:
        call = await session.get(Call, call_id)
        if call is None or not has_conversation(call.transcript):
            return
        if call.status not in states.FINAL and job.attempts < FINAL_STATUS_WAIT_ATTEMPTS:
            # A job of before analysis_state: Twilio's final status follows within seconds.
            raise RetryLater(delay=5.0 * job.attempts, reason="waiting for the final status")
        agent = await session.get(Agent, call.agent_id) if call.agent_id else None
        questions = list(agent.analysis_questions) if agent is not None else []
        criteria = agent.success_criteria if agent is not None else None
        transcript = list(call.transcript)
    try:
        result = await analyse(ctx.llm, transcript, questions, criteria)
    except LLMError as exc:
        if job.attempts >= job.max_attempts:  # no analysis: HubSpot still gets the call
            await hubspot_jobs.analysis_gave_up(ctx, call_id)
        raise RetryLater(delay=None, reason=str(exc)) from exc
    key = questions_key(questions, ctx.llm.model, criteria)
    async with ctx.sessionmaker() as session, session.begin():
        call = await session.get(Call, call_id, with_for_update=True)
        if call is None:
            return
        call.data = result
        await store_analysis(session, call_id, key, result, replace=True)
        await hubspot_jobs.call_finished(session, call)
        project = await session.get(Project, call.project_id)
        if project is not None:
            await enqueue_call_event(
                session, project=project, event="call.analyzed", call=CallOut.of(call).public()
            )


async def store_analysis(
    session: AsyncSession,
    call_id: uuid.UUID,
    key: str,
    result: dict[str, Any],
    *,
    replace: bool,
) -> None:
    """Store one answered set of questions about a call, in the caller's transaction.

    One INSERT ... ON CONFLICT on the (call_id, questions_key) unique constraint, so two writers
    of the same answer at once (the post-call job and POST /call/analysis, or two identical
    asks) never fail on it. `replace`: the new answer wins (the post-call job, which also
    writes it to the call's `data`: the two must agree). Otherwise the stored answer is kept
    (on demand: an identical ask answered a moment earlier already gave its answer out).
    """
    # SQLite and PostgreSQL (the two databases the server runs on) write ON CONFLICT alike.
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    row = insert(CallAnalysis).values(call_id=call_id, questions_key=key, result=result)
    unique = [CallAnalysis.call_id, CallAnalysis.questions_key]
    stmt = (
        row.on_conflict_do_update(index_elements=unique, set_={"result": row.excluded.result})
        if replace
        else row.on_conflict_do_nothing(index_elements=unique)
    )
    await session.execute(stmt)


# -- on demand: POST /call/analysis ----------------------------------------------------------


async def analysis_on_demand(
    ctx: AppContext, call: Call, questions: Sequence[Question] | None
) -> dict[str, Any]:
    """Answer `questions` (or the agent's) about a finished call; identical asks are cached.

    `call` is owned by the caller (checked by the router). The LLM is asked with no database
    connection held.
    """
    if call.status not in states.FINAL:
        raise Conflict("The call is still in progress.", code="CALL_IN_PROGRESS")
    if not has_conversation(call.transcript):
        raise Conflict("The call has no transcript to analyse.", code="NO_TRANSCRIPT")
    call_id = call.id
    async with ctx.sessionmaker() as session:
        # The agent's success criteria judge every analysis of its calls.
        agent = await session.get(Agent, call.agent_id) if call.agent_id else None
        criteria = agent.success_criteria if agent is not None else None
        if not questions:
            questions = list(agent.analysis_questions) if agent is not None else []
        key = questions_key(questions, ctx.llm.model, criteria)
        cached = await session.scalar(
            select(CallAnalysis.result).where(
                CallAnalysis.call_id == call_id, CallAnalysis.questions_key == key
            )
        )
    if cached is not None:
        return dict(cached)
    try:
        result = await analyse(ctx.llm, list(call.transcript), questions, criteria)
    except LLMError as exc:
        log.warning("analysis of call %s failed: %s", call.call_sid, exc)
        raise LLMUnavailable("The language model could not analyse the call; try again.") from exc
    async with ctx.sessionmaker() as session, session.begin():
        await store_analysis(session, call_id, key, result, replace=False)
    return result
