"""The tools an agent's LLM may call during a call.

Built in: `end_call` (every agent), `transfer_call` (an agent with a transferNumber) and
`press_digits` (outbound calls: an IVR to navigate). Custom tools are the agent's own webhooks:
the server POSTs the arguments to the tool's URL, signed like project webhooks
(X-Talkstack-Signature with the project's secret), through the SSRF-guarded client, within the
tool's timeout and a size limit, and hands the answer back to the LLM as the tool's result.
Whatever goes wrong (a timeout, an error status, a refused address) becomes a short result the
LLM can explain to the callee: a tool never leaves a dead line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from app.config import Settings
from app.jobs.ssrf import blocked_reason, guarded_client
from app.jobs.webhooks import SIGNATURE_HEADER, sign

log = logging.getLogger("talkstack.conversation.tools")

USER_AGENT = "Talkstack-Tools/1"
# What a tool may answer (more is refused: the answer goes into the LLM's context).
MAX_ANSWER_BYTES = 16 * 1024
# How much of an answer the transcript keeps.
TRANSCRIPT_RESULT_CHARS = 2000
DIGITS = re.compile(r"^[0-9*#wW]{1,32}$")

END_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "Hang up the phone call. Use it after saying goodbye, when the "
        "conversation is over or the callee asks to end it.",
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why the call ends, in a few words."}
            },
            "required": [],
            "additionalProperties": False,
        },
    },
}

TRANSFER_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "transfer_call",
        "description": "Transfer the callee to a human colleague. Use it when the callee asks "
        "for a person or needs help you cannot give. First tell the callee, in one short "
        "sentence, that you are transferring them; then call this tool.",
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {
                    "type": "string",
                    "description": "Why the callee needs a human, in a few words.",
                },
                "summary": {
                    "type": "string",
                    "description": "What the human should know: who the callee is and what "
                    "they need, in one or two sentences.",
                },
            },
            "required": ["reason"],
            "additionalProperties": False,
        },
    },
}

PRESS_DIGITS_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "press_digits",
        "description": "Press keys on the phone's keypad, to navigate an automated menu "
        "(IVR). Digits 0-9, * and #; w waits half a second between keys.",
        "parameters": {
            "type": "object",
            "properties": {
                "digits": {"type": "string", "description": "The keys to press, e.g. 1 or 2w#"}
            },
            "required": ["digits"],
            "additionalProperties": False,
        },
    },
}

# Said while a custom tool works, when the LLM said nothing before calling it.
FILLERS = {
    "en": "One moment, please.",
    "es": "Un momento, por favor.",
    "fr": "Un instant, s'il vous plaît.",
    "de": "Einen Moment, bitte.",
    "it": "Un momento, per favore.",
    "pt": "Um momento, por favor.",
    "nl": "Een moment, alstublieft.",
}


def filler(language: str) -> str:
    return FILLERS.get(language.split("-", 1)[0].lower(), FILLERS["en"])


def tool_specs(
    custom: Sequence[Mapping[str, Any]], *, transfer: bool, keypad: bool
) -> list[dict[str, Any]]:
    """What the LLM is offered on every turn of one call (built once per call)."""
    specs = [END_CALL_TOOL]
    if transfer:
        specs.append(TRANSFER_CALL_TOOL)
    if keypad:
        specs.append(PRESS_DIGITS_TOOL)
    for tool in custom:
        specs.append(
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "description": tool["description"],
                    "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
                },
            }
        )
    return specs


def digits_of(arguments: Mapping[str, Any]) -> str | None:
    """The keys `press_digits` was asked to press, if they are keys a phone has."""
    digits = str(arguments.get("digits") or "").replace(" ", "")
    return digits if DIGITS.match(digits) else None


class ToolWebhooks:
    """Calls custom tools: one shared, SSRF-guarded HTTP client per process."""

    def __init__(self, settings: Settings) -> None:
        self._client = guarded_client(
            allow_private=settings.webhook_allow_private_hosts, timeout=30.0
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        tool: Mapping[str, Any],
        arguments: Mapping[str, Any],
        *,
        call: Mapping[str, Any],
        secret: str | None,
    ) -> str:
        """The tool's answer as the LLM gets it: its body (JSON or text), or what went wrong.
        Never raises (but for cancellation: the callee spoke)."""
        name = str(tool["name"])
        timeout = float(tool.get("timeoutSeconds") or 8.0)
        body = json.dumps(
            {
                "id": f"tlc_{uuid.uuid4().hex}",
                "tool": name,
                "arguments": dict(arguments),
                "call": dict(call),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if secret:
            headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                status, answer = await self._post(str(tool["url"]), body, headers)
        except TimeoutError:
            log.info("tool %s: no answer within %g s", name, timeout)
            return f"Error: the {name} tool did not answer within {timeout:g} seconds."
        except _TooLarge:
            log.info("tool %s: answer over %d bytes refused", name, MAX_ANSWER_BYTES)
            return f"Error: the {name} tool's answer was too large to use."
        except httpx.HTTPError as exc:
            # The reason never includes the URL: it may carry the receiver's own token.
            reason = blocked_reason(exc) or f"connection failed ({type(exc).__name__})"
            log.info("tool %s failed: %s", name, reason)
            return f"Error: the {name} tool could not be reached."
        log.info(
            "tool %s answered HTTP %d in %.0f ms", name, status, 1000 * (time.monotonic() - started)
        )
        text = answer.decode("utf-8", errors="replace").strip()
        if not 200 <= status < 300:
            return f"Error: the {name} tool answered HTTP {status}." + (
                f" It said: {text[:500]}" if text else ""
            )
        return text or "Done."

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        # The caller's asyncio.timeout bounds the whole exchange.
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            received = bytearray()
            # Decoded bytes count: a small compressed answer cannot inflate past the limit.
            async for chunk in response.aiter_bytes():
                received += chunk
                if len(received) > MAX_ANSWER_BYTES:
                    raise _TooLarge
            return response.status_code, bytes(received)


class _TooLarge(Exception):
    pass
