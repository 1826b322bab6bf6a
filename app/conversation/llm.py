"""The agent's language model: any OpenAI-compatible chat-completions server (LLM_BASE_URL).

Through the official `openai` client. Live turns stream (each text delta is handed on as it
arrives; tool calls are assembled from their deltas); post-call analysis asks for structured
output against a JSON schema.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
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
        self._http = httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
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
        try:
            stream = await self._live.chat.completions.create(
                model=self.model,
                messages=cast(Any, list(messages)),
                stream=True,
                temperature=self.temperature,
                tools=cast(Any, list(tools)) if tools else openai.omit,
            )
        except openai.OpenAIError as exc:
            raise LLMError(_describe(exc)) from exc
        calls: dict[int, _PartialCall] = {}
        try:
            async with stream:
                async for chunk in stream:
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    if delta.content:
                        yield TextDelta(delta.content)
                    for piece in delta.tool_calls or ():
                        partial = calls.setdefault(piece.index, _PartialCall())
                        if piece.id:
                            partial.id = piece.id
                        if piece.function is not None:
                            partial.name += piece.function.name or ""
                            partial.arguments += piece.function.arguments or ""
        except openai.OpenAIError as exc:
            raise LLMError(_describe(exc)) from exc
        except httpx.HTTPError as exc:
            raise LLMError(f"the LLM stream broke: {exc!r}") from exc
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
