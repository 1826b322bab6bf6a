"""The agent's language model: any OpenAI-compatible chat-completions server (LLM_BASE_URL).

Live turns stream: the chat-completions request is posted with aiohttp and its server-sent
events read here (each text delta is handed on as it arrives; tool calls are assembled from their
deltas). Post-call analysis goes through the official `openai` client and asks for structured
output against a JSON schema.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp
import httpx
import openai
from openai import AsyncOpenAI

from app.config import Settings

log = logging.getLogger("talkstack.llm")

# How much of an error answer is read for its message.
_ERROR_BODY_LIMIT = 64 * 1024

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


class ChatModel(Protocol):
    """What the app asks of the language model (LanguageModel): the live call's turns, and
    one structured completion for the post-call analysis."""

    model: str

    def stream_turn(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[TextDelta | ToolCall]: ...

    async def structured(
        self, messages: Sequence[Message], *, name: str, schema: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class LanguageModel:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.llm_model
        self.temperature = settings.llm_temperature
        timeout = httpx.Timeout(settings.llm_timeout_seconds, connect=5.0)
        # Local servers (vLLM, Ollama, the tests' stand-in) often need no key; the client
        # insists on one.
        key = settings.llm_api_key or "unset"
        # Post-call analysis: the official client, its retries and typed answers.
        self._client = AsyncOpenAI(base_url=settings.llm_base_url, api_key=key, timeout=timeout)
        # The client imports its resources lazily (~0.4 s): at startup, not on a call.
        self._client.chat.completions  # noqa: B018
        # Live turns: the same request on aiohttp directly (see `stream_turn`).
        self._url = settings.llm_base_url.rstrip("/") + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        # As the client's: 5 s to connect, then the LLM timeout between two reads.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=5.0, sock_read=settings.llm_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None

    def _live(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200),
                headers=self._headers,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def aclose(self) -> None:
        await self._client.close()
        if self._session is not None:
            await self._session.close()

    async def stream_turn(
        self, messages: Sequence[Message], tools: Sequence[dict[str, Any]] = ()
    ) -> AsyncIterator[TextDelta | ToolCall]:
        """The agent's next turn: text deltas as they arrive, then any tool calls.

        The request the official client would send for `chat.completions.create(stream=True)`,
        posted with aiohttp and its server-sent events read here: the client's request
        building, its httpx layers and its per-chunk models cost 0.3-1 ms of CPU per turn
        (bench/llm_bench.py), most of a turn's budget with many calls. Cancelling the consumer
        closes the connection, so the server stops generating.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "stream": True,
            "temperature": self.temperature,
        }
        if tools:
            body["tools"] = list(tools)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            response = await self._live().post(self._url, data=payload)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LLMError(_unreachable(exc)) from exc
        calls: dict[int, _PartialCall] = {}
        finished = False
        try:
            if response.status >= 300:
                raise LLMError(f"the LLM answered {response.status}: {await _error_of(response)}")
            done = False
            async with contextlib.aclosing(_sse_data(response.content)) as events:
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
            finished = True
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if isinstance(exc, TimeoutError):
                raise LLMError("the LLM timed out") from exc
            raise LLMError(f"the LLM stream broke: {exc!r}") from exc
        finally:
            if finished:
                response.release()  # read whole: the connection goes back to the pool
            else:
                response.close()  # cut off, or broken: the LLM stops generating
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


async def _sse_data(content: aiohttp.StreamReader) -> AsyncGenerator[str]:
    """The data of each server-sent event (`data:` lines; a blank line ends an event)."""
    data: list[str] = []
    async for raw in content:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append((value[1:] if value.startswith(b" ") else value).decode())
    if data:
        yield "\n".join(data)


async def _error_of(response: aiohttp.ClientResponse) -> str:
    """What an error answer says: OpenAI's `{"error": {"message": ...}}`, else its text."""
    raw = await response.content.read(_ERROR_BODY_LIMIT)
    text = raw.decode(errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500] or (response.reason or "no reason given")
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        return message
    return text[:500]


def _unreachable(exc: BaseException) -> str:
    return "the LLM timed out" if isinstance(exc, TimeoutError) else "the LLM is unreachable"


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
