"""The live turn's request to the LLM (app/integrations/llm.py `stream_turn`), against the
OpenAI stand-in: what is sent, what is read back, and each way it can fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.config import Settings
from app.integrations.llm import LanguageModel, LLMError, TextDelta, ToolCall
from tests.conftest import free_port
from tests.standins.llm import API_KEY, MODEL, LLMStandin

HISTORY = [
    {"role": "system", "content": "You are Jack from the clinic. Say « bonjour »."},
    {"role": "user", "content": "When are you open?"},
]
TOOL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "Hang up.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
}


def model_for(base_url: str, **settings: Any) -> LanguageModel:
    values: dict[str, Any] = {
        "llm_base_url": base_url,
        "llm_api_key": API_KEY,
        "llm_model": MODEL,
        "llm_temperature": 0.4,
        **settings,
    }
    return LanguageModel(Settings(_env_file=None, **values))


@pytest.fixture
async def model(llm: LLMStandin) -> AsyncIterator[LanguageModel]:
    lm = model_for(llm.base_url)
    yield lm
    await lm.aclose()


async def turn(lm: LanguageModel, tools: list[dict[str, Any]] | None = None) -> list[Any]:
    return [item async for item in lm.stream_turn(HISTORY, tools=tools or ())]


async def test_a_turn_streams_text_then_the_tool_calls(model, llm):
    llm.reply_tool_calls(
        [("end_call", {"reason": "done"}), ("end_call", "")], text=["Goodbye", " then."]
    )
    items = await turn(model, [TOOL])
    assert items[:2] == [TextDelta("Goodbye"), TextDelta(" then.")]
    first, second = items[2:]
    assert isinstance(first, ToolCall) and isinstance(second, ToolCall)
    assert (first.name, first.arguments) == ("end_call", {"reason": "done"})
    assert (second.name, second.arguments) == ("end_call", {})  # no arguments: none
    assert first.id == llm.requests[0].tool_calls[0].id

    # Complete once the stand-in has written its last byte, which the client may read first.
    [request] = await llm.wait_for_finished(1)
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": MODEL,
        "messages": HISTORY,
        "stream": True,
        "temperature": 0.4,
        "tools": [TOOL],
    }
    assert request.completed and not request.disconnected


async def test_turns_share_one_connection(model, llm):
    for text in ("One.", "Two.", "Three."):
        llm.reply_text([text])
        assert await turn(model) == [TextDelta(text)]
    # Each answer was read to its end, so its connection went back to the pool.
    session = model._live()
    assert session.connector is not None
    assert len(session.connector._conns) == 1
    assert "tools" not in llm.requests[0].body


async def test_an_error_answer_is_an_llm_error_with_openais_message(model, llm):
    llm.reply_error(429, message="Rate limit reached for gpt-4o-mini.")
    with pytest.raises(LLMError) as raised:
        await turn(model)
    assert str(raised.value) == "the LLM answered 429: Rate limit reached for gpt-4o-mini."


async def test_a_wrong_key_is_an_llm_error(llm):
    lm = model_for(llm.base_url, llm_api_key="sk-wrong")
    try:
        with pytest.raises(LLMError, match=r"^the LLM answered 401: Incorrect API key"):
            await turn(lm)
    finally:
        await lm.aclose()


async def test_an_error_event_in_the_stream_is_an_llm_error(model, llm):
    llm.reply_stream_error(["Our opening", " hours"], after=1, message="The server had an error.")
    items: list[Any] = []
    with pytest.raises(LLMError, match=r"^the LLM failed: The server had an error."):
        async for item in model.stream_turn(HISTORY):
            items.append(item)
    assert items == [TextDelta("Our opening")]


async def test_a_broken_stream_is_an_llm_error(model, llm):
    llm.reply_break(["Our opening", " hours", " are"], after=1)
    items: list[Any] = []
    with pytest.raises(LLMError, match=r"^the LLM stream broke"):
        async for item in model.stream_turn(HISTORY):
            items.append(item)
    assert items == [TextDelta("Our opening")]
    llm.reply_text(["Still here."])
    assert await turn(model) == [TextDelta("Still here.")]  # a new connection


async def test_an_unreachable_llm_is_an_llm_error():
    lm = model_for(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(LLMError, match=r"^the LLM is unreachable$"):
            await turn(lm)
    finally:
        await lm.aclose()


async def test_an_llm_that_stops_answering_times_out(llm):
    lm = model_for(llm.base_url, llm_timeout_seconds=0.3)
    llm.reply_hang()
    try:
        with pytest.raises(LLMError, match=r"^the LLM timed out$"):
            await asyncio.wait_for(turn(lm), 5)
    finally:
        await lm.aclose()
    await llm.wait_for_cancelled(1)


async def test_a_turn_cut_off_closes_the_stream(model, llm):
    llm.reply_text(["Our opening", " hours are", " nine to five."], delay=0.3)
    stream = model.stream_turn(HISTORY)
    assert await anext(stream) == TextDelta("Our opening")
    await stream.aclose()  # the callee interrupted
    await llm.wait_for_cancelled(1)  # the LLM saw the connection go: it stops generating
    [request] = llm.requests
    assert not request.completed
