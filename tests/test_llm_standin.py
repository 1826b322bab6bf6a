"""The LLM stand-in speaks OpenAI's wire format: proven with the official `openai` client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel

from app.config import Settings
from tests.standins.llm import API_KEY, DEFAULT_TEXT, MODEL, LLMStandin, sample_for_schema

USER: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a friendly receptionist."},
    {"role": "user", "content": "Hi, I'd like to book a table."},
]

END_CALL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "Hang up once the conversation is over.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@pytest.fixture
async def oai(llm: LLMStandin) -> AsyncIterator[openai.AsyncOpenAI]:
    async with llm.client(max_retries=0) as c:
        yield c


async def collect(stream: openai.AsyncStream[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream]


def content_of(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


# -- the settings the app needs --------------------------------------------------------------


def test_settings_overrides_are_settings(llm: LLMStandin) -> None:
    overrides = llm.settings_overrides()
    settings = Settings(_env_file=None, **overrides)
    assert settings.llm_base_url == llm.base_url
    assert settings.llm_base_url.endswith("/v1")
    assert settings.llm_api_key == API_KEY
    assert settings.llm_model == MODEL


# -- streamed text ---------------------------------------------------------------------------


async def test_streamed_text_arrives_in_chunks_and_joins(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    text = "Of course! For how many people, and at what time?"
    llm.reply_text(text)
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        temperature=0.3,
    )
    chunks = await collect(stream)

    pieces = content_of(chunks)
    assert len(pieces) > 3
    assert "".join(pieces) == text
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and first.id.startswith("chatcmpl-")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is None  # no include_usage, no usage chunk
    assert stream.response.headers["content-type"].startswith("text/event-stream")

    # The stand-in records the answer complete once it has written the last byte, which the
    # client can have read before that.
    [request] = await llm.wait_for_finished(1)
    assert request.model == MODEL
    assert request.stream is True
    assert request.temperature == 0.3
    assert request.messages == USER
    assert request.system_text == "You are a friendly receptionist."
    assert request.last_user_text == "Hi, I'd like to book a table."
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.reply == "text" and request.completed and not request.disconnected
    assert request.content == text
    # role chunk, one per piece, the finish chunk
    assert request.chunks_sent == len(pieces) + 2


async def test_chunks_and_delays_are_configurable(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_text("abcdefghi", chunks=3, first_delay=0.3, delay=0.1)
    started = time.monotonic()
    stream = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    arrivals: list[tuple[float, str]] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - started, chunk.choices[0].delta.content))

    assert [piece for _, piece in arrivals] == ["abc", "def", "ghi"]
    assert arrivals[0][0] >= 0.3
    assert arrivals[1][0] - arrivals[0][0] >= 0.09
    assert arrivals[2][0] - arrivals[1][0] >= 0.09


async def test_exact_pieces_and_default_reply(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_text(["Hel", "lo", "!"])
    first = content_of(
        await collect(await oai.chat.completions.create(model=MODEL, messages=USER, stream=True))
    )
    assert first == ["Hel", "lo", "!"]

    # Nothing scripted: a short default text, streamed or not.
    second = await collect(
        await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    )
    assert "".join(content_of(second)) == DEFAULT_TEXT
    completion = await oai.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert [r.reply for r in llm.requests] == ["text", "default", "default"]


async def test_non_streaming_completion(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_text("Table for two at eight, booked.")
    raw = await oai.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    completion = raw.parse()

    assert raw.headers["content-type"] == "application/json"
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion._request_id is not None and completion._request_id.startswith("req_")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Table for two at eight, booked."
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    assert llm.last_request.stream is False


async def test_usage_chunk_with_include_usage(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_text("Three little words")
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = await collect(stream)

    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    assert final.usage.completion_tokens == 3
    assert final.usage.total_tokens == final.usage.prompt_tokens + 3
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert llm.last_request.include_usage is True


async def test_max_tokens_cuts_the_answer_with_length(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    llm.reply_text("one two three four five")
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_completion_tokens=2,
    )
    assert completion.choices[0].message.content == "one two"
    assert completion.choices[0].finish_reason == "length"


# -- tool calls ------------------------------------------------------------------------------


async def test_streamed_tool_call_is_assembled_by_the_sdk(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    call_id = llm.reply_tool_call(
        "end_call", {"reason": "the caller said goodbye"}, text="Goodbye!", pieces=5
    )
    argument_deltas: list[str] = []
    async with oai.chat.completions.stream(
        model=MODEL,
        messages=USER,
        tools=[END_CALL],
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                argument_deltas.append(event.arguments_delta)
        completion = await stream.get_final_completion()

    assert len([d for d in argument_deltas if d]) == 5  # the head carries `arguments: ""`
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Goodbye!"
    [call] = choice.message.tool_calls or []
    assert call.id == call_id
    assert call.type == "function"
    assert call.function.name == "end_call"
    assert json.loads(call.function.arguments) == {"reason": "the caller said goodbye"}
    assert call.function.parsed_arguments == {"reason": "the caller said goodbye"}
    request = llm.last_request
    assert request.tool_names == ["end_call"]
    assert request.reply == "tool_calls"
    assert request.tool_calls[0].name == "end_call"


async def test_streamed_tool_call_assembled_by_hand(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    """The way a voice engine reads a live turn: text as it comes, tool calls by index."""
    loose_tool: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": "end_call", "parameters": {"type": "object", "properties": {}}},
    }
    llm.reply_tool_calls([("end_call", {}), ("transfer", '{"to": "+14155550100"}')])
    stream = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        stream=True,
        tools=[loose_tool],
        tool_choice="auto",
    )
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish: str | None = None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish

    assert text == []
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["end_call", "transfer"]
    assert json.loads(calls[0]["arguments"]) == {}
    assert json.loads(calls[1]["arguments"]) == {"to": "+14155550100"}
    assert all(c["id"].startswith("call_") for c in calls.values())
    assert llm.last_request.tool_choice == "auto"


async def test_non_streaming_tool_call(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_tool_call("end_call", {"reason": "done"})
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[END_CALL],
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    [call] = message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "end_call"
    assert json.loads(call.function.arguments) == {"reason": "done"}


async def test_forced_tool_choice_calls_the_tool_by_default(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[END_CALL],
        tool_choice={"type": "function", "function": {"name": "end_call"}},
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "end_call"
    assert json.loads(call.function.arguments) == {"reason": "example"}


async def test_tool_results_must_answer_tool_calls(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    """OpenAI's 400s for a history a conversation engine can get wrong."""
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "end_call", "arguments": "{}"},
    }
    orphan: list[ChatCompletionMessageParam] = [
        *USER,
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    with pytest.raises(openai.BadRequestError) as orphan_error:
        await oai.chat.completions.create(model=MODEL, messages=orphan)
    assert orphan_error.value.param == "messages.[2].role"
    assert "must be a response to a preceeding message with 'tool_calls'" in str(orphan_error.value)

    unanswered: list[ChatCompletionMessageParam] = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    with pytest.raises(openai.BadRequestError) as unanswered_error:
        await oai.chat.completions.create(model=MODEL, messages=unanswered)
    assert "did not have response messages: call_1" in str(unanswered_error.value)

    answered: list[ChatCompletionMessageParam] = [
        *unanswered,
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    completion = await oai.chat.completions.create(model=MODEL, messages=answered)
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert [r.status for r in llm.requests] == [400, 400, 200]


# -- structured outputs ----------------------------------------------------------------------


class Sentiment(StrEnum):
    positive = "positive"
    neutral = "neutral"
    negative = "negative"


class Booking(BaseModel):
    party_size: int
    time: str
    confirmed: bool


class CallAnalysis(BaseModel):
    summary: str
    successful: bool
    sentiment: Sentiment
    score: float
    topics: list[str]
    booking: Booking | None
    callback_number: str | None


async def test_parse_returns_a_schema_conforming_object_by_default(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    completion = await oai.chat.completions.parse(
        model=MODEL,
        messages=USER,
        response_format=CallAnalysis,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, CallAnalysis)
    assert parsed.sentiment is Sentiment.positive  # an enum takes its first option
    assert parsed.successful is True
    assert parsed.topics and isinstance(parsed.booking, Booking)

    request = llm.last_request
    assert request.reply == "schema"
    assert request.structured and request.stream is False
    assert request.response_format is not None
    assert request.response_format["json_schema"]["strict"] is True
    assert request.json_schema is not None
    assert jsonschema_rs.validator_for(request.json_schema).is_valid(parsed.model_dump(mode="json"))


async def test_json_schema_response_format_honours_the_schema(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "label": {"type": "string", "enum": ["hot", "cold"]},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "minLength": 12},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "outcome": {"anyOf": [{"$ref": "#/$defs/Outcome"}, {"type": "null"}]},
            "note": {"type": ["string", "null"]},
        },
        "required": ["rating", "ratio", "label", "when", "code", "tags", "outcome", "note"],
        "additionalProperties": False,
        "$defs": {
            "Outcome": {
                "type": "object",
                "properties": {"done": {"type": "boolean"}, "kind": {"const": "booking"}},
                "required": ["done", "kind"],
                "additionalProperties": False,
            }
        },
    }
    completion = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "analysis", "schema": schema, "strict": True},
        },
    )
    value = json.loads(completion.choices[0].message.content or "")
    assert jsonschema_rs.validator_for(schema).is_valid(value)
    assert set(value) == set(schema["properties"])
    assert value["label"] == "hot"
    assert value["outcome"] == {"done": True, "kind": "booking"}
    assert len(value["tags"]) == 2
    assert sample_for_schema(schema) == value


async def test_scripted_json_and_streamed_structured_output(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    scripted = {
        "summary": "Booked a table.",
        "successful": False,
        "sentiment": "negative",
        "score": 0.25,
        "topics": ["booking"],
        "booking": None,
        "callback_number": "+14155550100",
    }
    llm.reply_json(scripted)
    llm.reply_json(scripted)
    completion = await oai.chat.completions.parse(
        model=MODEL,
        messages=USER,
        response_format=CallAnalysis,
    )
    assert completion.choices[0].message.parsed == CallAnalysis.model_validate(scripted)
    assert llm.last_request.reply == "json"

    async with oai.chat.completions.stream(
        model=MODEL,
        messages=USER,
        response_format=CallAnalysis,
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == CallAnalysis.model_validate(scripted)


async def test_replies_go_to_the_requests_they_match(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    """A live turn's scripted text is not taken by a post-call analysis, nor the reverse."""
    llm.reply_text("Live turn text.")
    llm.reply_json({"summary": "x"})
    analysis = await oai.chat.completions.create(
        model=MODEL,
        messages=USER,
        response_format={"type": "json_object"},
    )
    assert json.loads(analysis.choices[0].message.content or "") == {"summary": "x"}
    assert llm.pending_replies == 1
    live = await oai.chat.completions.create(model=MODEL, messages=USER)
    assert live.choices[0].message.content == "Live turn text."
    assert llm.pending_replies == 0


async def test_strict_schema_mistakes_are_rejected_like_openai(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    loose: dict[str, object] = {
        "type": "object",
        "properties": {"summary": {"type": "string"}},
        "required": [],
    }
    with pytest.raises(openai.BadRequestError) as error:
        await oai.chat.completions.create(
            model=MODEL,
            messages=USER,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "analysis", "schema": loose, "strict": True},
            },
        )
    assert error.value.param == "response_format"
    assert error.value.body == {
        "message": "Invalid schema for response_format 'analysis': In context=(), "
        "'additionalProperties' is required to be supplied and to be false.",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": None,
    }

    loose["additionalProperties"] = False
    with pytest.raises(openai.BadRequestError, match="Missing 'summary'"):
        await oai.chat.completions.create(
            model=MODEL,
            messages=USER,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "analysis", "schema": loose, "strict": True},
            },
        )
    with pytest.raises(openai.BadRequestError, match="'stream_options' parameter is only allowed"):
        await oai.chat.completions.create(
            model=MODEL,
            messages=USER,
            stream_options={"include_usage": True},
        )


# -- errors ----------------------------------------------------------------------------------


async def test_500_and_429_raise_the_sdks_errors(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_error(500)
    with pytest.raises(openai.InternalServerError) as server_error:
        await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    assert server_error.value.status_code == 500
    assert server_error.value.type == "server_error"
    assert server_error.value.body == {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }

    llm.reply_error(429, retry_after=2)
    with pytest.raises(openai.RateLimitError) as rate_error:
        await oai.chat.completions.create(model=MODEL, messages=USER)
    assert rate_error.value.code == "rate_limit_exceeded"
    assert rate_error.value.response.headers["retry-after"] == "2"

    llm.reply_error(400, message="This model's maximum context length is 128000 tokens.")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await oai.chat.completions.create(model=MODEL, messages=USER)
    assert [r.status for r in llm.requests] == [500, 429, 400]
    assert [r.reply for r in llm.requests] == ["error"] * 3


async def test_the_sdk_retries_scripted_errors(llm: LLMStandin) -> None:
    llm.reply_error(503, count=2, retry_after=0.01)
    llm.reply_text("Third time lucky.")
    async with llm.client(max_retries=2) as retrying:
        completion = await retrying.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == "Third time lucky."
    assert [r.retry_count for r in llm.requests] == [0, 1, 2]
    assert [r.status for r in llm.requests] == [503, 503, 200]


async def test_a_wrong_key_is_an_authentication_error(llm: LLMStandin) -> None:
    async with llm.client(api_key="sk-wrong-key-0000") as wrong:
        with pytest.raises(openai.AuthenticationError) as error:
            await wrong.chat.completions.create(model=MODEL, messages=USER)
    assert error.value.status_code == 401
    assert error.value.code == "invalid_api_key"
    assert isinstance(error.value.body, dict)
    assert re.match(r"Incorrect API key provided: sk-\*+0000\. ", error.value.body["message"])
    assert llm.last_request.status == 401
    assert llm.last_request.reply == "rejected"

    llm.api_key = None  # any key will do
    async with llm.client(api_key="sk-wrong-key-0000") as anyone:
        completion = await anyone.chat.completions.create(model=MODEL, messages=USER)
    assert completion.choices[0].message.content == DEFAULT_TEXT


async def test_a_wrong_path_is_openais_404(llm: LLMStandin) -> None:
    base = llm.base_url.removesuffix("/v1")
    async with openai.AsyncOpenAI(base_url=base, api_key=API_KEY, max_retries=0) as no_v1:
        with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /chat/completions\)"):
            await no_v1.chat.completions.create(model=MODEL, messages=USER)


# -- broken streams --------------------------------------------------------------------------


async def test_a_stream_that_breaks_midway(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_break("one two three four five six", after=2)
    stream = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["one", " two"]
    [request] = await llm.wait_for_finished(1)
    assert request.reply == "break"
    assert not request.completed and not request.disconnected


async def test_a_body_that_breaks_midway(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_break()
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model=MODEL, messages=USER)


async def test_an_error_event_in_the_stream(llm: LLMStandin, oai: openai.AsyncOpenAI) -> None:
    llm.reply_stream_error("Let me check that for you", after=2)
    stream = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError, match="The server had an error"):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["Let", " me"]


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelling_a_hanging_request_is_recorded(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    llm.reply_hang()
    task = asyncio.create_task(oai.chat.completions.create(model=MODEL, messages=USER, stream=True))
    await llm.wait_for_requests(1)
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    await llm.wait_for_cancelled(1)
    request = llm.last_request
    assert request.reply == "hang"
    assert request.disconnected and not request.completed and request.finished


async def test_cancelling_a_slow_stream_midway_is_recorded(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    """The callee interrupts: the engine stops reading and closes the completion."""
    llm.reply_text("Our opening hours are nine to five, Monday to Friday.", delay=5)
    started = time.monotonic()
    stream = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[str] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
            break
    await stream.close()

    await llm.wait_for_cancelled(1)
    assert time.monotonic() - started < 3
    assert received == ["Our"]
    request = llm.last_request
    assert request.disconnected and not request.completed
    assert request.chunks_sent == 2  # the role chunk and the first piece


async def test_cancelling_the_task_that_reads_a_stream_is_recorded(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    llm.reply_text("A long answer the caller will not wait for.", delay=5)
    first = asyncio.Event()

    async def speak() -> None:
        stream = await oai.chat.completions.create(model=MODEL, messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first.set()

    task = asyncio.create_task(speak())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await llm.wait_for_cancelled(1)
    assert llm.last_request.disconnected


async def test_a_finished_stream_is_not_a_cancellation(
    llm: LLMStandin, oai: openai.AsyncOpenAI
) -> None:
    for _ in range(3):
        await collect(await oai.chat.completions.create(model=MODEL, messages=USER, stream=True))
    await llm.wait_for_finished(3)
    assert llm.cancelled == 0
    assert all(r.completed for r in llm.requests)


async def test_reset_releases_a_hanging_request(llm: LLMStandin) -> None:
    llm.reply_hang()
    async with llm.client(timeout=5) as c:
        task = asyncio.create_task(c.chat.completions.create(model=MODEL, messages=USER))
        await llm.wait_for_requests(1)
        llm.reset()
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            await asyncio.wait_for(task, 3)
    assert llm.requests == []  # a fresh state after reset
