"""The agent's language model: any OpenAI-compatible chat-completions server (LLM_BASE_URL).

Through the official `openai` client. Live turns stream (each text delta is handed on as it
arrives; tool calls are assembled from their deltas); post-call analysis asks for structured
output against a JSON schema.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI

from app.config import Settings

log = logging.getLogger("talkstack.llm")

Message = dict[str, Any]


class LLMError(Exception):
    """The LLM could not be reached, refused, or answered something unusable."""


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class LanguageModel:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self.temperature = settings.llm_temperature
        timeout = httpx.Timeout(settings.llm_timeout_seconds, connect=5.0)
        # Local servers (vLLM, Ollama, the tests' stand-in) often need no key; the client
        # insists on one.
        key = settings.llm_api_key or "unset"
        # aiohttp under httpx's API (the `openai[aiohttp]` client): its connection pool costs a
        # fraction of httpcore's per request, which is most of a turn's CPU with many calls.
        self._http = openai.DefaultAioHttpClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            follow_redirects=False,
        )
        self._client = AsyncOpenAI(
            base_url=settings.llm_base_url, api_key=key, timeout=timeout, http_client=self._http
        )
        # A live turn cannot wait for retries: the callee is listening. Analysis can.
        self._live = self._client.with_options(max_retries=0)
        # The client imports its resources lazily (~0.4 s): at startup, not on a live call.
        self._client.chat.completions  # noqa: B018
        self._live.chat.completions  # noqa: B018

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()

    async def stream_turn(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[TextDelta | ToolCall]:
        """The agent's next turn: text deltas as they arrive, then any tool calls.

        Cancelling the consumer closes the HTTP stream, so the server stops generating.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "stream": True,
            "temperature": self.temperature,
        }
        if tools:
            body["tools"] = list(tools)
        try:
            # The client's `post`, not `chat.completions.create`: the same request, without the
            # SDK checking every message of the history against its TypedDicts nor building
            # models for each chunk (together most of a turn's CPU); the events are read below.
            response = cast(
                httpx.Response,
                await self._live.post(
                    "/chat/completions", body=body, cast_to=httpx.Response, stream=True
                ),
            )
        except openai.OpenAIError as exc:
            raise LLMError(_describe(exc)) from exc
        calls: dict[int, _PartialCall] = {}
        try:
            done = False
            async with contextlib.aclosing(_sse_data(response)) as events:
                async for data in events:
                    if done:
                        continue  # read to the end of the body: the connection is then reused
                    if data.startswith("[DONE]"):
                        done = True
                        continue
                    chunk = _chunk(data)
                    choices = chunk.get("choices")
                    if not choices:
                        continue
                    delta = choices[0].get("delta") or {}
                    if content := delta.get("content"):
                        yield TextDelta(content)
                    for piece in delta.get("tool_calls") or ():
                        partial = calls.setdefault(piece.get("index", 0), _PartialCall())
                        if piece.get("id"):
                            partial.id = piece["id"]
                        if (function := piece.get("function")) is not None:
                            partial.name += function.get("name") or ""
                            partial.arguments += function.get("arguments") or ""
        except httpx.HTTPError as exc:
            raise LLMError(f"the LLM stream broke: {exc!r}") from exc
        finally:
            await response.aclose()
        for index in sorted(calls):
            partial = calls[index]
            try:
                arguments = json.loads(partial.arguments) if partial.arguments else {}
            except json.JSONDecodeError:
                log.warning("tool call %s with unreadable arguments", partial.name)
                arguments = {}
            if not isinstance(arguments, dict):
                arguments = {}
            yield ToolCall(partial.id, partial.name, arguments)

    async def structured(
        self, messages: Sequence[Message], *, name: str, schema: dict[str, Any]
    ) -> dict[str, Any]:
        """One completion whose content is a JSON object following `schema` (strict)."""
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                messages=cast(Any, list(messages)),
                temperature=0,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": True},
                },
            )
        except openai.OpenAIError as exc:
            raise LLMError(_describe(exc)) from exc
        if not completion.choices:
            raise LLMError("the LLM answered no choices")
        message = completion.choices[0].message
        if getattr(message, "refusal", None):
            raise LLMError(f"the LLM refused: {message.refusal}")
        try:
            value = json.loads(message.content or "")
        except json.JSONDecodeError as exc:
            raise LLMError("the LLM's answer is not JSON") from exc
        if not isinstance(value, dict):
            raise LLMError("the LLM's answer is not a JSON object")
        return value


async def _sse_data(response: httpx.Response) -> AsyncGenerator[str]:
    """The data of each server-sent event (`data:` lines; a blank line ends an event)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _chunk(data: str) -> dict[str, Any]:
    """One `chat.completion.chunk` event as JSON; an error event (`{"error": ...}`) raises."""
    try:
        chunk = json.loads(data)
    except ValueError as exc:
        raise LLMError("the LLM sent an unreadable stream event") from exc
    if not isinstance(chunk, dict):
        raise LLMError("the LLM sent an unreadable stream event")
    if error := chunk.get("error"):
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        raise LLMError(f"the LLM failed: {message}")
    return chunk


def _describe(exc: openai.OpenAIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"the LLM answered {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "the LLM timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "the LLM is unreachable"
    return f"the LLM failed: {exc}"


def build_language_model(settings: Settings) -> LanguageModel:
    return LanguageModel(settings)
