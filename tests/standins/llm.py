"""An OpenAI stand-in: a real HTTP server on 127.0.0.1 that speaks `POST /v1/chat/completions`.

The app reaches it with the official client, `openai.AsyncOpenAI(base_url=<server>/v1, ...)`,
so the SDK does the real work: Bearer auth, `chat.completion` objects, `chat.completion.chunk`
server-sent events (`data: {...}` lines, `data: [DONE]`), streamed tool calls, the usage chunk of
`stream_options.include_usage`, and OpenAI's error bodies (`{"error": {"message", "type", "param",
"code"}}`) with their status codes. Requests are checked the way OpenAI checks them (a strict
`json_schema` whose objects lack `additionalProperties: false`, a `tool` message that answers no
`tool_calls`... are 400s), and every request is recorded for assertions.

Replies are scripted in a FIFO (`reply_text`, `reply_tool_call`, `reply_json`, `reply_error`,
`reply_break`, `reply_stream_error`, `reply_hang`); without one, a structured-output request gets
an object that conforms to its schema and any other request a short text. A client that goes away
before its reply is over (a cancelled completion) is counted in `cancelled`.

Use the `llm` fixture (one server per session, state reset for each test):

    async def test_x(llm, settings_overrides):
        settings_overrides.update(llm.settings_overrides())
        llm.reply_text("Hello! How can I help?", delay=0.01)
        llm.reply_tool_call("end_call", {"reason": "done"})
        ...
        [request] = await llm.wait_for_requests(1)
        assert request.stream and request.tools[0]["function"]["name"] == "end_call"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.standins.server import LocalServer, reset_around, running

API_KEY = "sk-standin-" + "0123456789abcdef" * 3
MODEL = "gpt-4o-mini"
DEFAULT_TEXT = "Sure, I can help with that."

__all__ = [
    "API_KEY",
    "DEFAULT_TEXT",
    "MODEL",
    "ChatRequest",
    "LLMStandin",
    "Reply",
    "ToolCall",
    "error_body",
    "new_call_id",
    "sample_for_schema",
    "split_text",
    "strict_schema_problem",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
# Which requests a scripted reply may answer: "chat" (no structured-output response_format),
# "structured" (response_format json_schema or json_object), "any", or a predicate.
Match = Literal["any", "chat", "structured"] | Callable[["ChatRequest"], bool]
ReplyKind = Literal["text", "tool_calls", "error", "break", "stream_error", "hang"]

_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ALNUM = string.ascii_letters + string.digits

# OpenAI's own messages for the statuses a test is likely to script: (message, type, code).
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("Project does not have access to model `{model}`", "invalid_request_error", None),
    404: (
        "The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: (
        "Rate limit reached for {model} in organization org-standin on requests per min (RPM): "
        "Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def new_call_id() -> str:
    """A tool call id shaped like OpenAI's: `call_` and 24 letters and digits."""
    return "call_" + _random(24)


def split_text(text: str, chunks: int | None = None) -> list[str]:
    """Token-like pieces that join back to `text`: words with their leading spaces, or, given
    `chunks`, that many slices of about equal length."""
    if not text:
        return []
    if chunks is not None:
        return _slices(text, chunks)
    pieces: list[str] = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        pieces.append(rest)
    return pieces


def _slices(text: str, count: int) -> list[str]:
    if not text:
        return []
    size = math.ceil(len(text) / max(1, min(count, len(text))))
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- scripted replies ------------------------------------------------------------------------


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text, as the model produces it
    pieces: int = 4  # how many `function.arguments` deltas carry it in a stream


@dataclass
class Reply:
    """One scripted answer. Build them with `LLMStandin.reply_*`; `script()` takes them too."""

    kind: ReplyKind
    match: Match = "any"
    label: str = ""  # recorded as ChatRequest.reply ("text", "json", "tool_calls"...)
    pieces: list[str] = field(default_factory=list)  # the assistant text, as streamed
    has_text: bool = True  # False: `content` is null (a tool call with no text before it)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    first_delay: float = 0.0  # before the first chunk (or, not streaming, before the answer)
    delay: float = 0.0  # between chunks
    status: int = 200
    error: dict[str, Any] | None = None  # {"message", "type", "param", "code"}
    headers: dict[str, str] = field(default_factory=dict)
    after: int = 0  # break / stream_error: content chunks sent first

    def accepts(self, request: ChatRequest) -> bool:
        if callable(self.match):
            return self.match(request)
        if self.match == "chat":
            return not request.structured
        if self.match == "structured":
            return request.structured
        return True


# -- what was asked --------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """One `POST /v1/chat/completions` as OpenAI would have received it, and what it got."""

    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float  # time.monotonic()
    reply: str = ""  # text, json, tool_calls, error, break, stream_error, hang, default,
    #                  schema (generated for the response_format), rejected (401/400)
    status: int = 200
    content: str | None = None  # the assistant text it was sent (or was being sent)
    tool_calls: list[ToolCall] = field(default_factory=list)
    chunks_sent: int = 0  # SSE `data:` events written (the final [DONE] not counted)
    completed: bool = False  # the whole answer was sent
    disconnected: bool = False  # the client went away before the answer was over
    finished: bool = False  # the server is done with it, whatever the outcome
    finished_at: float | None = None

    @property
    def model(self) -> str | None:
        value = self.body.get("model")
        return value if isinstance(value, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        value = self.body.get("messages")
        return value if isinstance(value, list) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        value = self.body.get("tools")
        return value if isinstance(value, list) else []

    @property
    def tool_names(self) -> list[str]:
        return [str(t.get("function", {}).get("name")) for t in self.tools]

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")

    @property
    def response_format(self) -> dict[str, Any] | None:
        value = self.body.get("response_format")
        return value if isinstance(value, dict) else None

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The `response_format.json_schema.schema`, if one was asked for."""
        fmt = self.response_format
        if fmt is None or fmt.get("type") != "json_schema":
            return None
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None

    @property
    def structured(self) -> bool:
        fmt = self.response_format
        return fmt is not None and fmt.get("type") in ("json_schema", "json_object")

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def stream_options(self) -> dict[str, Any] | None:
        value = self.body.get("stream_options")
        return value if isinstance(value, dict) else None

    @property
    def include_usage(self) -> bool:
        return self.stream and bool((self.stream_options or {}).get("include_usage"))

    @property
    def temperature(self) -> float | None:
        value = self.body.get("temperature")
        return float(value) if isinstance(value, int | float) else None

    @property
    def max_tokens(self) -> int | None:
        for key in ("max_completion_tokens", "max_tokens"):
            value = self.body.get(key)
            if isinstance(value, int):
                return value
        return None

    @property
    def system_text(self) -> str | None:
        """The first system (or developer) message's text."""
        for message in self.messages:
            if message.get("role") in ("system", "developer"):
                return _text_of(message)
        return None

    @property
    def last_user_text(self) -> str | None:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _text_of(message)
        return None

    @property
    def retry_count(self) -> int:
        """The SDK's `x-stainless-retry-count`: 0 for a first try."""
        try:
            return int(self.headers.get("x-stainless-retry-count", "0"))
        except ValueError:
            return 0


def _text_of(message: Mapping[str, Any]) -> str | None:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return None


# -- schemas ---------------------------------------------------------------------------------


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        raise ValueError(f"only local $refs are supported: {ref}")
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if not isinstance(node, Mapping):
        raise ValueError(f"$ref {ref} is not a schema")
    return node


def _number(schema: Mapping[str, Any], integral: bool) -> int | float:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = 1 if integral else 0.5
    low = lo if lo is not None else (xlo + step if xlo is not None else None)
    high = hi if hi is not None else (xhi - step if xhi is not None else None)
    if low is not None and high is not None:
        value: float = low if integral else (low + high) / 2
    elif low is not None:
        value = low
    elif high is not None:
        value = min(0, high)
    else:
        value = 0
    if integral:
        whole = math.ceil(value)
        multiple = schema.get("multipleOf")
        if isinstance(multiple, int) and multiple > 0:
            whole = math.ceil(whole / multiple) * multiple
        return whole
    return float(value)


_FORMATS = {
    "date-time": "2025-01-15T12:00:00Z",
    "date": "2025-01-15",
    "time": "12:00:00Z",
    "duration": "PT1M",
    "email": "someone@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def sample_for_schema(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, _depth: int = 0
) -> Any:
    """A value that conforms to a JSON schema, as a model under structured outputs returns:
    every property of an object (never another), enums and unions take their first option,
    arrays their `minItems` (at least one item), numbers and strings honour their bounds."""
    root = schema if root is None else root
    if _depth > 32:
        return None
    if "$ref" in schema:
        return sample_for_schema(_resolve(root, str(schema["$ref"])), root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if o.get("type") != "null"), options[0])
            return sample_for_schema(chosen, root, _depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(root, part["$ref"]) if "$ref" in part else part
            for k, v in part.items():
                if k == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **v}
                else:
                    merged.setdefault(k, v)
        return sample_for_schema(merged, root, _depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        return {k: sample_for_schema(v, root, _depth + 1) for k, v in properties.items()}
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        items = [sample_for_schema(p, root, _depth + 1) for p in prefix]
        count = max(int(schema.get("minItems", 0)), 1)
        if schema.get("maxItems") is not None:
            count = min(count, int(schema["maxItems"]))
        item_schema = schema.get("items")
        if isinstance(item_schema, Mapping):
            while len(items) < count:
                items.append(sample_for_schema(item_schema, root, _depth + 1))
        return items
    if kind == "string":
        value = _FORMATS.get(str(schema.get("format")), "example")
        min_length = int(schema.get("minLength", 0))
        if len(value) < min_length:
            value += "x" * (min_length - len(value))
        if schema.get("maxLength") is not None:
            value = value[: int(schema["maxLength"])]
        return value
    if kind == "integer":
        return _number(schema, integral=True)
    if kind == "number":
        return _number(schema, integral=False)
    if kind == "boolean":
        return True
    return None


def strict_schema_problem(schema: Any, path: tuple[str, ...] = ()) -> str | None:
    """What OpenAI's strict mode rejects in a schema, in its words; None if it is accepted."""
    if not isinstance(schema, Mapping):
        return None
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={path!r}, 'additionalProperties' is required to be supplied "
                "and to be false."
            )
        properties = schema.get("properties") or {}
        required = schema.get("required")
        missing = [k for k in properties if not isinstance(required, list) or k not in required]
        if missing:
            return (
                f"In context={path!r}, 'required' is required to be supplied and to be an "
                f"array including every key in properties. Missing '{missing[0]}'."
            )
        for name, sub in properties.items():
            if problem := strict_schema_problem(sub, (*path, "properties", name)):
                return problem
    if "items" in schema and (problem := strict_schema_problem(schema["items"], (*path, "items"))):
        return problem
    for key in ("anyOf", "allOf"):
        for i, sub in enumerate(schema.get(key) or []):
            if problem := strict_schema_problem(sub, (*path, key, str(i))):
                return problem
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            if problem := strict_schema_problem(sub, (*path, key, name)):
                return problem
    return None


# -- OpenAI's checks -------------------------------------------------------------------------

_Problem = tuple[str, str | None, str | None]  # message, param, code


def _request_problem(body: Mapping[str, Any]) -> _Problem | None:
    """The 400s OpenAI answers for mistakes a caller can make; None if the request is fine."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return ("you must provide a model parameter", None, None)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not messages:
        return (
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    if problem := _messages_problem(messages):
        return problem
    if body.get("stream_options") is not None and body.get("stream") is not True:
        return (
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            None,
        )
    if problem := _tools_problem(body):
        return problem
    return _response_format_problem(body.get("response_format"))


def _messages_problem(messages: list[Any]) -> _Problem | None:
    open_calls: list[str] = []  # tool_call_ids of the last assistant message, not yet answered
    asked_at = -1
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            return (
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                "'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        assert isinstance(message, dict)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                return (
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                    "'tool_call_id'.",
                    f"messages.[{i}].tool_call_id",
                    "missing_required_parameter",
                )
            if call_id not in open_calls:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                    None,
                )
            open_calls.remove(call_id)
            continue
        if open_calls:
            return _unanswered(open_calls, asked_at)
        if role == "assistant" and message.get("tool_calls"):
            open_calls = [str(c.get("id")) for c in message["tool_calls"]]
            asked_at = i
    if open_calls:
        return _unanswered(open_calls, asked_at)
    return None


def _unanswered(call_ids: list[str], index: int) -> _Problem:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(call_ids),
        f"messages.[{index}].role",
        None,
    )


def _tools_problem(body: Mapping[str, Any]) -> _Problem | None:
    tools = body.get("tools")
    if body.get("tool_choice") is not None and not tools:
        return (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            "tool_choice",
            None,
        )
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            return (f"Invalid 'tools[{i}]': expected a function tool.", f"tools[{i}]", None)
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            return (
                f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected a "
                "string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"tools[{i}].function.name",
                "invalid_value",
            )
        if function.get("strict") is True:
            problem = strict_schema_problem(function.get("parameters") or {})
            if problem:
                return (
                    f"Invalid schema for function '{name}': {problem}",
                    f"tools[{i}].function.parameters",
                    "invalid_function_parameters",
                )
    return None


def _response_format_problem(fmt: Any) -> _Problem | None:
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        return (
            f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', "
            "and 'text'.",
            "response_format.type",
            "invalid_value",
        )
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema")
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        return (
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    assert isinstance(spec, dict)
    schema = spec.get("schema")
    if spec.get("strict") is True:
        if not isinstance(schema, dict) or schema.get("type") != "object":
            got = schema.get("type") if isinstance(schema, dict) else None
            return (
                f"Invalid schema for response_format '{name}': schema must be a JSON Schema of "
                f"'type: \"object\"', got 'type: \"{got}\"'.",
                "response_format",
                None,
            )
        if problem := strict_schema_problem(schema):
            return (
                f"Invalid schema for response_format '{name}': {problem}",
                "response_format",
                None,
            )
    return None


# -- the wire --------------------------------------------------------------------------------


class _Dropped(Exception):
    """Raised inside the app so that uvicorn closes the connection mid-answer."""


class _QuietDrops(logging.Filter):
    """uvicorn logs an app exception as an error; a scripted drop is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Dropped)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _usage(request: ChatRequest, completion_tokens: int) -> dict[str, Any]:
    prompt = max(1, len(json.dumps(request.messages)) // 4)
    completion = max(1, completion_tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _common_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", f"req_{secrets.token_hex(16)}".encode()),
        (b"openai-version", b"2020-10-01"),
        (b"openai-processing-ms", b"7"),
        (b"openai-organization", b"org-standin"),
    ]


def error_body(
    status: int,
    *,
    message: str | None = None,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error object for `status`, with its usual message, type and code."""
    default_message, default_type, default_code = _ERRORS.get(
        status, ("Error.", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "message": message if message is not None else default_message.format(model=model or MODEL),
        "type": error_type if error_type is not None else default_type,
        "param": param,
        "code": code if code is not None else default_code,
    }


class _Answer(Response):
    """Plays one reply on the wire while watching for the client to go away."""

    def __init__(
        self,
        standin: LLMStandin,
        state: _State,
        request: ChatRequest,
        reply: Reply,
        release: asyncio.Event,
    ) -> None:
        self.standin = standin
        self.state = state
        self.request = request
        self.reply = reply
        self.release = release
        self.completion_id = "chatcmpl-" + _random(29)
        self.created = int(time.time())
        self.model = request.model or MODEL
        self.final_sent = False
        pieces = list(reply.pieces)
        finish = reply.finish_reason
        limit = request.max_tokens
        if reply.kind == "text" and limit is not None and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
        self.pieces = pieces
        self.finish_reason = finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.standin._lock:
            self.request.content = "".join(self.pieces) if self.reply.has_text else None
            self.request.tool_calls = list(self.reply.tool_calls)
        writer = asyncio.ensure_future(self._play(send))
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done() and not self.final_sent:
                # The client went away first: what a cancelled completion looks like here.
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, _Dropped):
                    await writer
                self.standin._finish(self.state, self.request, disconnected=True)
                return
            with contextlib.suppress(asyncio.CancelledError, _Dropped):
                await writer  # (the last send may still be under way)
            if writer.exception() is None:
                self.standin._finish(self.state, self.request, completed=True)
            else:
                self.standin._finish(self.state, self.request)
                writer.result()  # re-raises: a scripted drop closes the connection
        finally:
            for task in (writer, watcher):
                task.cancel()
            await asyncio.gather(writer, watcher, return_exceptions=True)

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the stand-in is reset or stopped meanwhile: then drop the connection."""
        if self.release.is_set():
            raise _Dropped
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self.release.wait()
        except TimeoutError:
            return
        raise _Dropped

    async def _start(self, send: Send, status: int, content_type: bytes, *extra: Any) -> None:
        headers = [(b"content-type", content_type), *_common_headers(), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def _send_json(
        self, send: Send, status: int, body: Any, headers: Mapping[str, str]
    ) -> None:
        data = _dumps(body)
        extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        extra.append((b"content-length", str(len(data)).encode()))
        await self._start(send, status, b"application/json", *extra)
        self.final_sent = True
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _play(self, send: Send) -> None:
        reply = self.reply
        if reply.kind == "hang":
            await self.release.wait()
            raise _Dropped
        if reply.kind == "error" or (reply.kind == "stream_error" and not self.request.stream):
            await self._pause(reply.first_delay)
            body = {"error": reply.error or error_body(500, model=self.model)}
            await self._send_json(send, reply.status, body, reply.headers)
            return
        if self.request.stream:
            await self._stream(send)
        else:
            await self._whole(send)

    # -- chat.completion ---------------------------------------------------------------------

    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.pieces) if self.reply.has_text else None,
            "refusal": None,
            "annotations": [],
        }
        if self.reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.reply.tool_calls
            ]
        return message

    def _completion_tokens(self) -> int:
        return len(self.pieces) + sum(call.pieces for call in self.reply.tool_calls)

    async def _whole(self, send: Send) -> None:
        reply = self.reply
        steps = max(0, len(self.pieces) + len(reply.tool_calls) - 1)
        await self._pause(reply.first_delay + reply.delay * steps)
        body = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": self._message(),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": _usage(self.request, self._completion_tokens()),
            "service_tier": "default",
            "system_fingerprint": self.standin.fingerprint,
        }
        if reply.kind != "break":
            await self._send_json(send, 200, body, {})
            return
        data = _dumps(body)
        await self._start(
            send, 200, b"application/json", (b"content-length", str(len(data)).encode())
        )
        await send(
            {"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True}
        )
        raise _Dropped

    # -- chat.completion.chunk ---------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.standin.fingerprint,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.request.include_usage:
            chunk["usage"] = None
        if delta is not None and (self.request.stream_options or {}).get(
            "include_obfuscation", True
        ):
            chunk["obfuscation"] = _random(secrets.randbelow(12) + 1)
        return chunk

    def _deltas(self) -> list[dict[str, Any]]:
        """The deltas of the whole answer, in order, the way OpenAI splits them."""
        reply = self.reply
        deltas: list[dict[str, Any]] = []
        role: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        if not reply.has_text:
            role["content"] = None
        deltas.append(role)
        deltas.extend({"content": piece} for piece in self.pieces)
        for index, call in enumerate(reply.tool_calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            if len(deltas) == 1 and not reply.has_text:
                role["tool_calls"] = [head]  # OpenAI sends the first call with the role
            else:
                deltas.append({"tool_calls": [head]})
            deltas.extend(
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in _slices(call.arguments, call.pieces)
            )
        return deltas

    async def _event(self, send: Send, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else _dumps(payload)
        await send(
            {"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True}
        )
        if payload != b"[DONE]":
            with self.standin._lock:
                self.request.chunks_sent += 1

    async def _stream(self, send: Send) -> None:
        reply = self.reply
        await self._start(send, 200, b"text/event-stream; charset=utf-8")
        deltas = self._deltas()
        # The role chunk goes with the first piece; `after` counts content pieces.
        stop_after = 1 + reply.after if reply.kind in ("break", "stream_error") else None
        await self._pause(reply.first_delay)
        for i, delta in enumerate(deltas):
            if stop_after is not None and i >= stop_after:
                break
            if i > 1:
                await self._pause(reply.delay)
            await self._event(send, self._chunk(delta))
        if reply.kind == "break":
            raise _Dropped
        if reply.kind == "stream_error":
            error = reply.error or error_body(500, model=self.model)
            await self._event(send, {"error": error})
            self.final_sent = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._event(send, self._chunk({}, self.finish_reason))
        if self.request.include_usage:
            usage_chunk = self._chunk(None)
            usage_chunk["usage"] = _usage(self.request, self._completion_tokens())
            await self._event(send, usage_chunk)
        await self._event(send, b"[DONE]")
        self.final_sent = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- the stand-in ----------------------------------------------------------------------------


@dataclass
class _State:
    replies: list[Reply] = field(default_factory=list)
    requests: list[ChatRequest] = field(default_factory=list)
    cancelled: int = 0


class LLMStandin:
    def __init__(self, api_key: str | None = API_KEY) -> None:
        self._initial_key = api_key
        self.api_key = api_key  # None: any key (or none) is accepted
        self.default_text = DEFAULT_TEXT
        self.validate = True  # answer OpenAI's 400s for malformed requests
        self.fingerprint = "fp_" + secrets.token_hex(5)
        self.state = _State()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )
        self._server = LocalServer(app, "llm-standin")

    # -- the wire ----------------------------------------------------------------------------

    def _release_event(self) -> asyncio.Event:
        """The event that ends pauses and hangs at reset/stop (one per generation)."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            if self._release is None:
                self._release = asyncio.Event()
            return self._release

    def _finish(
        self,
        state: _State,
        request: ChatRequest,
        *,
        completed: bool = False,
        disconnected: bool = False,
    ) -> None:
        with self._lock:
            request.completed = completed
            request.finished = True
            request.finished_at = time.monotonic()
            if disconnected:
                request.disconnected = True
                state.cancelled += 1

    def _reject(
        self, state: _State, request: ChatRequest, status: int, problem: _Problem, **headers: str
    ) -> JSONResponse:
        message, param, code = problem
        error_type = "invalid_request_error"
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        with self._lock:
            request.reply = "rejected"
            request.status = status
        self._finish(state, request, completed=True)
        response = JSONResponse(body, status_code=status, headers=headers or None)
        response.headers.update({k.decode(): v.decode() for k, v in _common_headers()})
        return response

    def _auth_problem(self, headers: Mapping[str, str]) -> _Problem | None:
        with self._lock:
            expected = self.api_key
        if expected is None:
            return None
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can obtain "
                "an API key from https://platform.openai.com/account/api-keys.",
                None,
                None,
            )
        if not secrets.compare_digest(key.strip(), expected):
            masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else key
            return (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                None,
                "invalid_api_key",
            )
        return None

    async def _chat_completions(self, http: Request) -> Response:
        raw = await http.body()
        headers = {k.lower(): v for k, v in http.headers.items()}
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        request = ChatRequest(
            body=body if isinstance(body, dict) else {},
            headers=headers,
            received_at=time.monotonic(),
        )
        release = self._release_event()
        with self._lock:
            state = self.state
            state.requests.append(request)
            validate = self.validate
        if problem := self._auth_problem(headers):
            return self._reject(state, request, 401, problem, **{"www-authenticate": "Bearer"})
        if not isinstance(body, dict):
            return self._reject(
                state,
                request,
                400,
                (
                    "We could not parse the JSON body of your request. (HINT: This likely means "
                    "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                    "payload, but what was sent was not valid JSON. If you have trouble figuring "
                    "out how to fix this, please contact us through our help center at "
                    "help.openai.com.)",
                    None,
                    None,
                ),
            )
        if validate and (problem := _request_problem(body)):
            return self._reject(state, request, 400, problem)
        with self._lock:
            reply = next((r for r in state.replies if r.accepts(request)), None)
            if reply is not None:
                state.replies.remove(reply)
            default_text = self.default_text
        if reply is None:
            reply = self._default_reply(request, default_text)
        with self._lock:
            request.reply = reply.label or reply.kind
            request.status = reply.status
        return _Answer(self, state, request, reply, release)

    def _default_reply(self, request: ChatRequest, text: str) -> Reply:
        choice = request.tool_choice
        forced: str | None = None
        if choice == "required" and request.tools:
            forced = request.tool_names[0]
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            forced = str(choice["function"].get("name"))
        if forced is not None:
            tool = next(
                (t for t in request.tools if t.get("function", {}).get("name") == forced), {}
            )
            parameters = tool.get("function", {}).get("parameters") or {"type": "object"}
            arguments = json.dumps(sample_for_schema(parameters))
            call = ToolCall(new_call_id(), forced, arguments)
            return Reply(
                "tool_calls",
                label="tool_calls",
                has_text=False,
                tool_calls=[call],
                finish_reason="tool_calls",
            )
        if request.json_schema is not None:
            value = sample_for_schema(request.json_schema)
            return Reply("text", label="schema", pieces=split_text(json.dumps(value)))
        if request.structured:
            return Reply("text", label="schema", pieces=["{}"])
        return Reply("text", label="default", pieces=split_text(text))

    async def _not_found(self, http: Request) -> JSONResponse:
        error = {
            "message": f"Invalid URL ({http.method} {http.url.path})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        return JSONResponse({"error": error}, status_code=404)

    # -- scripting ---------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the first queued one that `accepts` it."""
        with self._lock:
            self.state.replies.extend(replies)

    def reply_text(
        self,
        text: str | Sequence[str],
        *,
        chunks: int | None = None,
        first_delay: float = 0.0,
        delay: float = 0.0,
        finish_reason: FinishReason = "stop",
        match: Match = "chat",
    ) -> None:
        """Answer with text: streamed as word-like pieces (or `chunks` equal slices, or exactly
        the given pieces when `text` is a list), `first_delay` before the first chunk and `delay`
        between chunks; not streamed, the whole text after the total of those delays."""
        pieces = split_text(text, chunks) if isinstance(text, str) else list(text)
        self.script(
            Reply(
                "text",
                match=match,
                label="text",
                pieces=pieces,
                finish_reason=finish_reason,
                first_delay=first_delay,
                delay=delay,
            )
        )

    def reply_json(
        self,
        value: Any,
        *,
        chunks: int | None = None,
        first_delay: float = 0.0,
        delay: float = 0.0,
        match: Match = "structured",
    ) -> None:
        """Answer a structured-output request with `value` as its JSON content."""
        self.script(
            Reply(
                "text",
                match=match,
                label="json",
                pieces=split_text(json.dumps(value), chunks),
                first_delay=first_delay,
                delay=delay,
            )
        )

    def reply_tool_calls(
        self,
        calls: Sequence[tuple[str, Mapping[str, Any] | str]],
        *,
        text: str | Sequence[str] | None = None,
        pieces: int = 4,
        first_delay: float = 0.0,
        delay: float = 0.0,
        match: Match = "chat",
    ) -> list[str]:
        """Answer with (parallel) function calls, finish_reason "tool_calls", optionally after
        some text; each call's JSON arguments stream in `pieces` deltas. Returns the call ids."""
        tool_calls = [
            ToolCall(
                new_call_id(),
                name,
                arguments if isinstance(arguments, str) else json.dumps(arguments),
                pieces,
            )
            for name, arguments in calls
        ]
        text_pieces = (
            [] if text is None else split_text(text) if isinstance(text, str) else list(text)
        )
        self.script(
            Reply(
                "tool_calls",
                match=match,
                label="tool_calls",
                pieces=text_pieces,
                has_text=text is not None,
                tool_calls=tool_calls,
                finish_reason="tool_calls",
                first_delay=first_delay,
                delay=delay,
            )
        )
        return [call.id for call in tool_calls]

    def reply_tool_call(
        self,
        name: str,
        arguments: Mapping[str, Any] | str | None = None,
        *,
        text: str | Sequence[str] | None = None,
        pieces: int = 4,
        first_delay: float = 0.0,
        delay: float = 0.0,
        match: Match = "chat",
    ) -> str:
        """Answer with one function call (e.g. `end_call`); returns its id."""
        [call_id] = self.reply_tool_calls(
            [(name, {} if arguments is None else arguments)],
            text=text,
            pieces=pieces,
            first_delay=first_delay,
            delay=delay,
            match=match,
        )
        return call_id

    def reply_error(
        self,
        status: int,
        *,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        count: int = 1,
        first_delay: float = 0.0,
        match: Match = "any",
    ) -> None:
        """The next `count` requests get `status` with OpenAI's error body (its usual message,
        type and code for that status unless given) and, if set, a `retry-after` header."""
        headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
        error = error_body(status, message=message, error_type=error_type, code=code, param=param)
        self.script(
            *(
                Reply(
                    "error",
                    match=match,
                    status=status,
                    error=dict(error),
                    headers=headers,
                    first_delay=first_delay,
                )
                for _ in range(count)
            )
        )

    def reply_break(
        self,
        text: str | Sequence[str] = "This answer will not make it to the end.",
        *,
        after: int = 1,
        first_delay: float = 0.0,
        delay: float = 0.0,
        match: Match = "any",
    ) -> None:
        """Stream the role chunk and `after` content chunks, then close the connection without
        finishing the chunked body (the client sees a broken stream). Not streamed: half of the
        JSON body, then the same."""
        pieces = split_text(text) if isinstance(text, str) else list(text)
        self.script(
            Reply(
                "break",
                match=match,
                pieces=pieces,
                after=after,
                first_delay=first_delay,
                delay=delay,
            )
        )

    def reply_stream_error(
        self,
        text: str | Sequence[str] = "This answer will not make it to the end.",
        *,
        after: int = 1,
        status: int = 500,
        message: str | None = None,
        match: Match = "any",
    ) -> None:
        """Stream `after` content chunks, then an in-stream error event `data: {"error": ...}`
        (the SDK raises openai.APIError), then end the body. Not streamed: a plain error."""
        pieces = split_text(text) if isinstance(text, str) else list(text)
        self.script(
            Reply(
                "stream_error",
                match=match,
                pieces=pieces,
                after=after,
                status=status,
                error=error_body(status, message=message),
            )
        )

    def reply_hang(self, *, count: int = 1, match: Match = "any") -> None:
        """The next `count` requests get nothing at all, until the client gives up (recorded as
        a disconnect) or the stand-in is reset."""
        self.script(*(Reply("hang", match=match) for _ in range(count)))

    # -- what was asked ----------------------------------------------------------------------

    @property
    def requests(self) -> list[ChatRequest]:
        with self._lock:
            return list(self.state.requests)

    @property
    def last_request(self) -> ChatRequest:
        with self._lock:
            if not self.state.requests:
                raise AssertionError("the LLM stand-in has received no request")
            return self.state.requests[-1]

    @property
    def cancelled(self) -> int:
        """Requests whose client went away before their answer was over."""
        with self._lock:
            return self.state.cancelled

    @property
    def pending_replies(self) -> int:
        """Scripted replies no request has taken yet."""
        with self._lock:
            return len(self.state.replies)

    async def wait_until(
        self, predicate: Callable[[], bool], *, within: float = 5.0, what: str = "condition"
    ) -> None:
        """Poll `predicate` (from the test's loop) until it holds; AssertionError on timeout."""
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"LLM stand-in: timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def wait_for_requests(self, count: int = 1, *, within: float = 5.0) -> list[ChatRequest]:
        """Wait until at least `count` requests have arrived; returns them all."""
        await self.wait_until(
            lambda: len(self.requests) >= count, within=within, what=f"{count} request(s)"
        )
        return self.requests

    async def wait_for_finished(self, count: int = 1, *, within: float = 5.0) -> list[ChatRequest]:
        """Wait until at least `count` requests have been fully dealt with (answered, broken or
        abandoned by their client); returns all requests."""
        await self.wait_until(
            lambda: sum(r.finished for r in self.requests) >= count,
            within=within,
            what=f"{count} finished request(s)",
        )
        return self.requests

    async def wait_for_cancelled(self, count: int = 1, *, within: float = 5.0) -> None:
        """Wait until at least `count` clients went away before their answer was over."""
        await self.wait_until(
            lambda: self.cancelled >= count, within=within, what=f"{count} cancellation(s)"
        )

    # -- configuration -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (what `AsyncOpenAI(base_url=...)` takes), with its `/v1`."""
        return f"{self._server.base_url}/v1"

    def settings_overrides(self) -> dict[str, Any]:
        """Settings that point the app at this stand-in with a working key."""
        return {"llm_base_url": self.base_url, "llm_api_key": self.api_key, "llm_model": MODEL}

    def client(
        self, *, api_key: str | None = None, max_retries: int = 0, timeout: float = 10.0
    ) -> openai.AsyncOpenAI:
        """An official client pointed here (no retries unless asked)."""
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or self.api_key or "sk-anything",
            max_retries=max_retries,
            timeout=timeout,
        )

    def reset(self) -> None:
        """Forget requests and scripted replies; end hanging and paused answers."""
        with self._lock:
            release, loop = self._release, self._loop
            self._release = None
            self.state = _State()
            self.api_key = self._initial_key
            self.default_text = DEFAULT_TEXT
            self.validate = True
        if release is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(release.set)

    def start(self) -> None:
        _install_log_filter()
        self._server.start()

    def stop(self) -> None:
        self.reset()
        self._server.stop()
        with self._lock:
            self._loop = None


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMStandin]:
    with running(LLMStandin()) as standin:
        yield standin


@pytest.fixture
def llm(llm_server: LLMStandin) -> Iterator[LLMStandin]:
    """The session's OpenAI stand-in: no requests, no scripted replies, the default key."""
    with reset_around(llm_server) as standin:
        yield standin
