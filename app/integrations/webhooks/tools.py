"""Calling an agent's custom tools (its own webhooks) during a call.

The server POSTs the arguments to the tool's URL, signed like project webhooks
(X-Talkstack-Signature with the project's secret), through the SSRF-guarded client, within the
tool's timeout and a size limit, and hands the answer back as the tool's result. Whatever goes
wrong (a timeout, an error status, a refused address) becomes a short result the LLM can
explain to the callee; `call` never raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from app.config import Settings
from app.integrations.webhooks.sender import SIGNATURE_HEADER, sign
from app.integrations.webhooks.ssrf import blocked_reason, guarded_client

log = logging.getLogger("talkstack.conversation.tools")

USER_AGENT = "Talkstack-Tools/1"
# What a tool may answer (more is refused: the answer goes into the LLM's context).
MAX_ANSWER_BYTES = 16 * 1024


class ToolCaller(Protocol):
    """What a conversation needs to run a custom tool (ToolWebhooks)."""

    async def call(
        self,
        tool: Mapping[str, Any],
        arguments: Mapping[str, Any],
        *,
        call: Mapping[str, Any],
        secret: str | None,
    ) -> str: ...

    async def aclose(self) -> None: ...


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
