"""The tools an agent's LLM may call during a call.

Built in: `end_call` (every agent), `transfer_call` (an agent with a transferNumber) and
`press_digits` (outbound calls: an IVR to navigate). Custom tools are the agent's own webhooks,
called by app/integrations/webhooks/tools.py (ToolWebhooks); whatever goes wrong there
becomes a short result the LLM can explain to the callee: a tool never leaves a dead line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

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
