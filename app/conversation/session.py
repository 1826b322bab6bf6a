"""One live call's conversation, spoken over Twilio ConversationRelay.

Twilio does speech recognition and synthesis; this class decides what the agent says. It reads
ConversationRelay's messages (`setup`, `prompt`, `interrupt`, `dtmf`, `error`), streams each
reply from the LLM to Twilio token by token (`text`, `last` on the final one), and ends the
call (`end`) when the agent calls its `end_call` tool, at the agent's maximum call duration,
after the callee stays silent past the reprompts, or when the LLM fails (after an apology).

It knows nothing of WebSockets or databases: it is given a `send` coroutine and the incoming
messages, and reports each finished turn through `on_turn` (the caller saves the transcript).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.conversation.tools import (
    TRANSCRIPT_RESULT_CHARS,
    digits_of,
    filler,
    tool_specs,
)
from app.integrations.llm import ChatModel, LLMError, Message, TextDelta, ToolCall

log = logging.getLogger("talkstack.conversation")

Send = Callable[[dict[str, Any]], Awaitable[None]]
OnTurn = Callable[[list[dict[str, Any]]], Awaitable[None]]
# Runs one of the agent's custom tools: (the tool, the LLM's arguments) -> the answer.
RunTool = Callable[[dict[str, Any], dict[str, Any]], Awaitable[str]]
# Tool rounds within one agent turn (the LLM calls tools, reads the answers, speaks): a model
# that keeps calling tools is stopped here.
MAX_TOOL_ROUNDS = 4

VOICE_GUIDANCE = (
    "You are speaking on a live phone call; your words are turned into speech. Answer in "
    "short, natural spoken sentences, with no lists, markdown, emojis or URLs. Speak in the "
    "language {language}. When the conversation is over, say goodbye and call the end_call "
    "tool."
)
REPROMPT_NUDGE = (
    "The callee has said nothing for a while. Briefly and politely check whether they are "
    "still on the line; do not repeat your previous answer."
)
# What the agent is told when a transfer nobody took sends the callee back to it (the
# transcript's transfer_call turn says why: "The transfer failed: nobody answered.").
TRANSFER_FAILED_NOTE = (
    "{result} The callee waited for the transfer and is back on the line with you now. Tell "
    "them so, briefly, then carry on helping them as well as you can. You cannot transfer "
    "this call again."
)

# What the agent says when the LLM fails mid-call: short, then a clean hang-up.
APOLOGIES = {
    "en": "I'm sorry, I'm having technical trouble and have to end this call. Goodbye.",
    "es": "Lo siento, tengo un problema técnico y debo terminar la llamada. Adiós.",
    "fr": "Je suis désolé, j'ai un problème technique et je dois mettre fin à l'appel. Au revoir.",
    "de": "Es tut mir leid, ich habe ein technisches Problem und muss das Gespräch beenden. "
    "Auf Wiederhören.",
    "it": "Mi dispiace, ho un problema tecnico e devo terminare la chiamata. Arrivederci.",
    "pt": "Desculpe, estou com um problema técnico e preciso encerrar a chamada. Adeus.",
    "nl": "Het spijt me, ik heb een technisch probleem en moet het gesprek beëindigen. Dag.",
}


def apology(language: str) -> str:
    return APOLOGIES.get(language.split("-", 1)[0].lower(), APOLOGIES["en"])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Script:
    """What the conversation needs from the call and its agent."""

    system_instruction: str
    first_message: str | None
    language: str = "en-US"
    max_duration_seconds: float = 600.0
    # The agent's human colleague (E.164) and how to hand over: "cold" or "warm".
    transfer_number: str | None = None
    transfer_mode: str = "cold"
    # The agent's custom tools (name, description, parameters, url, ...).
    tools: tuple[dict[str, Any], ...] = ()
    # Whether the agent may press keys (an outbound call may meet an IVR).
    keypad: bool = False


@dataclass(frozen=True)
class Timing:
    silence_seconds: float = 6.0
    reprompts: int = 2
    speech_chars_per_second: float = 15.0

    def speech_seconds(self, text: str) -> float:
        """Roughly how long Twilio takes to say `text` (its speech is not reported back)."""
        return len(text) / self.speech_chars_per_second


class Conversation:
    def __init__(
        self,
        script: Script,
        llm: ChatModel,
        send: Send,
        *,
        timing: Timing | None = None,
        on_turn: OnTurn | None = None,
        run_tool: RunTool | None = None,
        clock: Callable[[], float] = time.monotonic,
        earlier: Sequence[dict[str, Any]] = (),
    ) -> None:
        """`earlier`: the transcript of an earlier relay session of the same call, which the
        agent remembers; `transcript` holds this session's turns only. When `earlier` ends
        with a failed warm transfer, this session takes the callee back: no greeting, and the
        agent speaks first."""
        self.script = script
        self.llm = llm
        self._send = send
        self.timing = timing or Timing()
        self._on_turn = on_turn
        self._run_tool = run_tool
        self._clock = clock
        # One transfer per call: an agent whose transfer nobody took is not offered the
        # tool again (app/conversation/transfer.py).
        self._may_transfer = bool(script.transfer_number) and not any(
            _is_transfer(turn) for turn in earlier
        )
        self._tools = tool_specs(script.tools, transfer=self._may_transfer, keypad=script.keypad)
        # This session takes the callee back after that failed transfer: Twilio greets no one
        # (the session's TwiML has no greeting), and the agent, told why, speaks first.
        self._resuming = bool(earlier) and bool(earlier[-1].get("transferFailed"))
        self._custom = {str(t["name"]): t for t in script.tools}
        # The hand-over the call ends with, when the agent transferred it.
        self.transfer: dict[str, Any] | None = None
        system = script.system_instruction.strip()
        guidance = VOICE_GUIDANCE.format(language=script.language)
        self.history: list[Message] = [{"role": "system", "content": f"{system}\n\n{guidance}"}]
        self.history += [message for turn in earlier if (message := _message_of(turn))]
        self.transcript: list[dict[str, Any]] = []
        self.ended_reason: str | None = None
        self.setup: dict[str, Any] = {}
        # The agent turn the callee may still be hearing: (transcript index, history index).
        self._speaking: tuple[int, int] | None = None
        self._reply: asyncio.Task[None] | None = None
        self._pending_prompt: list[str] = []
        self._silent_since: float | None = None
        self._reprompts_done = 0
        self._deadline: float | None = None
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._ending: asyncio.Task[None] | None = None

    # -- running -----------------------------------------------------------------------------

    async def run(self, messages: AsyncIterator[dict[str, Any]]) -> None:
        """Converse until the call ends (either side) or `messages` runs out."""
        reader = asyncio.create_task(self._read(messages), name="relay-read")
        watchdog = asyncio.create_task(self._watch(), name="relay-watchdog")
        done_waiter = asyncio.create_task(self._done.wait(), name="relay-done")
        try:
            await asyncio.wait({reader, done_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, watchdog, done_waiter, self._reply, self._ending):
                if task is not None and not task.done():
                    task.cancel()
            for task in (reader, watchdog, done_waiter, self._reply, self._ending):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.warning("relay reader failed: %r", reader.exception())

    async def _read(self, messages: AsyncIterator[dict[str, Any]]) -> None:
        async for message in messages:
            await self.handle(message)

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "setup":
            self._on_setup(message)
        elif kind == "prompt":
            await self._on_prompt(message)
        elif kind == "interrupt":
            await self._on_interrupt(message)
        elif kind == "dtmf":
            await self._on_dtmf(message)
        elif kind == "error":
            log.warning("ConversationRelay reported an error: %s", message.get("description"))
        else:
            log.info("ConversationRelay message of unknown type %r ignored", kind)
        self._changed.set()

    # -- Twilio's messages ---------------------------------------------------------------------

    def _on_setup(self, message: dict[str, Any]) -> None:
        if self.setup:
            return
        self.setup = message
        now = self._clock()
        self._deadline = now + self.script.max_duration_seconds
        if self._resuming:
            self._start_reply()
            return
        greeting = self.script.first_message
        if greeting:
            # Twilio speaks the welcome greeting itself (the TwiML's welcomeGreeting).
            self.history.append({"role": "assistant", "content": greeting})
            self._append({"role": "agent", "text": greeting, "interrupted": False})
            self._speaking = (len(self.transcript) - 1, len(self.history) - 1)
            self._silent_since = now + self.timing.speech_seconds(greeting)
        else:
            self._silent_since = now

    async def _on_prompt(self, message: dict[str, Any]) -> None:
        self._pending_prompt.append(str(message.get("voicePrompt") or ""))
        if message.get("last") is False:
            return  # a partial prompt: the callee is still speaking
        text = " ".join(p.strip() for p in self._pending_prompt if p.strip())
        self._pending_prompt.clear()
        if not text:
            return
        await self._stop_reply(heard=None)
        self._silent_since = None
        self._reprompts_done = 0
        self._speaking = None
        self.history.append({"role": "user", "content": text})
        self._append({"role": "user", "text": text})
        self._start_reply()

    async def _on_interrupt(self, message: dict[str, Any]) -> None:
        heard = str(message.get("utteranceUntilInterrupt") or "")
        await self._stop_reply(heard=heard)
        if self._speaking is not None:
            t_index, h_index = self._speaking
            turn = self.transcript[t_index]
            turn.setdefault("generatedText", turn["text"])
            turn["text"] = heard
            turn["interrupted"] = True
            self.history[h_index]["content"] = heard
            self._speaking = None
            await self._report()
        self._silent_since = None  # the callee is talking

    async def _on_dtmf(self, message: dict[str, Any]) -> None:
        digit = str(message.get("digit") or "")[:8]
        if not digit:
            return
        await self._stop_reply(heard=None)
        self._silent_since = None
        self._reprompts_done = 0
        self.history.append({"role": "user", "content": _keypad(digit)})
        self._append({"role": "user", "text": "", "dtmf": digit})
        self._start_reply()

    # -- the agent's replies --------------------------------------------------------------------

    def _start_reply(self, *, nudge: str | None = None) -> None:
        if self.ended_reason is not None:
            return
        self._reply = asyncio.create_task(self._speak(nudge), name="relay-reply")

    async def _stop_reply(self, *, heard: str | None) -> None:
        """Cancel a running reply (its completion is cancelled with it)."""
        task, self._reply = self._reply, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _speak(self, nudge: str | None) -> None:
        """One agent turn: what the LLM says, and the tools it uses on the way (their answers
        go back to it, and it goes on), until it has nothing more to do."""
        reprompt = nudge is not None
        for round_number in range(MAX_TOOL_ROUNDS + 1):
            messages = self.history if not reprompt else [*self.history, _system(str(nudge))]
            # The last round may only speak (or end the call): no more tools.
            last = round_number == MAX_TOOL_ROUNDS
            again = await self._round(messages, reprompt=reprompt, last=last)
            reprompt = False
            if not again:
                return

    async def _round(self, messages: list[Message], *, reprompt: bool, last: bool) -> bool:
        """One LLM request of a turn; True when it used tools (ask the LLM again)."""
        started = _now_iso()
        parts: list[str] = []
        calls: list[ToolCall] = []
        turn: dict[str, Any] = {"role": "agent", "text": "", "interrupted": False}
        if reprompt:
            turn["reprompt"] = True
        t_index: int | None = None
        message: Message | None = None
        try:
            tools = self._tools if not last else self._tools[:1]
            async for item in self.llm.stream_turn(messages, tools=tools):
                if isinstance(item, TextDelta):
                    if message is None:
                        # The turn exists from its first word: an interrupt may come any time.
                        message = {"role": "assistant", "content": ""}
                        self.history.append(message)
                        t_index = self._append(turn, started=started)
                        self._speaking = (t_index, len(self.history) - 1)
                    parts.append(item.text)
                    turn["text"] = message["content"] = "".join(parts)
                    await self._send({"type": "text", "token": item.text, "last": False})
                else:
                    calls.append(item)
            text = "".join(parts)
            if parts:
                await self._send({"type": "text", "token": "", "last": True})
        except LLMError as exc:
            log.warning("LLM failed mid-call: %s", exc)
            await self._fail(turn, parts, started)
            return False
        except asyncio.CancelledError:
            # Cut off: `_on_interrupt` records what the callee actually heard.
            if t_index is not None:
                turn["endedAt"] = _now_iso()
                turn["interrupted"] = True
            raise
        if t_index is not None:
            turn["endedAt"] = _now_iso()
            await self._report()
        speech = self.timing.speech_seconds(text)
        by_name = {c.name: c for c in calls}
        transfer = by_name.get("transfer_call")
        if transfer is not None and self._may_transfer:
            self._hand_over(transfer, turn, after=speech)
            return False
        end_call = by_name.get("end_call")
        if end_call is not None:
            reason = str(end_call.arguments.get("reason") or "")[:200]
            if reason:
                turn["endCallReason"] = reason
            self.end("agent-ended", after=speech)
            return False
        # Everything else is answered and the LLM asked again (a tool it was not offered
        # included: it is told there is none).
        work = [c for c in calls if c.name != "end_call"]
        if not work:
            # Said something (or, for an empty answer, nothing): listen again.
            self._silent_since = self._clock() + speech if t_index is not None else self._clock()
            self._changed.set()
            return False
        await self._use_tools(work, message, spoke=bool(text))
        return True

    async def _use_tools(
        self, calls: list[ToolCall], message: Message | None, *, spoke: bool
    ) -> None:
        """Answer each tool call into the history (as the chat-completions API wants: the
        assistant's tool calls, then one `tool` message per call) and the transcript."""
        entries = [
            {
                "id": call.id or f"call_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for i, call in enumerate(calls)
        ]
        if message is None:
            message = {"role": "assistant", "content": None}
            self.history.append(message)
        message["tool_calls"] = entries
        answered = 0
        try:
            for call, entry in zip(calls, entries, strict=True):
                result = await self._tool_result(call, message, spoke=spoke)
                spoke = True
                self.history.append(
                    {"role": "tool", "tool_call_id": entry["id"], "content": result}
                )
                answered += 1
                self._append(
                    {
                        "role": "tool",
                        "name": call.name,
                        "arguments": call.arguments,
                        "result": result[:TRANSCRIPT_RESULT_CHARS],
                    }
                )
            await self._report()
        finally:
            # Cut off by the callee: every tool call still gets its (unknown) answer, or the
            # next request's history would be refused.
            for entry in entries[answered:]:
                self.history.append(
                    {
                        "role": "tool",
                        "tool_call_id": entry["id"],
                        "content": "Interrupted: the callee spoke before the answer came; "
                        "the outcome is unknown.",
                    }
                )

    async def _tool_result(self, call: ToolCall, message: Message, *, spoke: bool) -> str:
        if call.name == "press_digits" and self.script.keypad:
            digits = digits_of(call.arguments)
            if digits is None:
                return "Error: digits may only be 0-9, * and # (and w to wait)."
            await self._send({"type": "sendDigits", "digits": digits})
            return f"Pressed {digits}."
        tool = self._custom.get(call.name)
        if tool is None or self._run_tool is None:
            return f"Error: there is no tool called {call.name}."
        if not spoke:
            # The callee would hear silence while the tool works: a short filler first.
            said = str(tool.get("fillerMessage") or filler(self.script.language))
            await self._send({"type": "text", "token": said, "last": True})
            message["content"] = said
            self._append({"role": "agent", "text": said, "interrupted": False, "filler": True})
        return await self._run_tool(dict(tool), dict(call.arguments))

    def _hand_over(self, call: ToolCall, turn: dict[str, Any], *, after: float) -> None:
        """End the relay session with a transfer: Twilio then asks the Connect action, which
        dials the agent's transfer number (transfer.py)."""
        reason = str(call.arguments.get("reason") or "")[:200]
        summary = str(call.arguments.get("summary") or "")[:1000]
        self.transfer = {
            "to": self.script.transfer_number,
            "mode": self.script.transfer_mode,
            "reason": reason,
            "summary": summary,
        }
        self._append(
            {
                "role": "tool",
                "name": "transfer_call",
                "arguments": call.arguments,
                "result": f"Transferring to {self.script.transfer_number}.",
            }
        )
        if turn.get("text"):
            turn["transferReason"] = reason
        self.end("transferred", after=after, handoff=self.transfer)

    async def _fail(self, turn: dict[str, Any], parts: list[str], started: str) -> None:
        """Say a short apology and hang up: never a dead line."""
        if parts:
            turn["endedAt"] = _now_iso()
        sorry = apology(self.script.language)
        try:
            await self._send({"type": "text", "token": sorry, "last": True})
        except Exception:  # the socket is gone: nothing to say it on
            log.info("could not send the apology: the relay socket is closed")
        self._append({"role": "agent", "text": sorry, "interrupted": False, "error": True})
        await self._report()
        self.end("llm-error", after=self.timing.speech_seconds(sorry))

    # -- ending ----------------------------------------------------------------------------

    def end(
        self, reason: str, *, after: float = 0.0, handoff: dict[str, Any] | None = None
    ) -> None:
        """End the call once the agent's last words are said (`after` seconds)."""
        if self.ended_reason is not None:
            return
        self.ended_reason = reason
        data: dict[str, Any] = {"reason": reason}
        if handoff is not None:
            data["transfer"] = handoff
        self._ending = asyncio.create_task(self._end_after(data, after), name="relay-end")

    async def _end_after(self, data: dict[str, Any], delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send({"type": "end", "handoffData": json.dumps(data)})
        finally:
            self._done.set()

    async def _watch(self) -> None:
        """Max call duration and the callee's silence."""
        while self.ended_reason is None:
            now = self._clock()
            wake: float | None = None
            if self._deadline is not None:
                if now >= self._deadline:
                    await self._stop_reply(heard=None)
                    self.end("max-duration")
                    return
                wake = self._deadline
            if self._silent_since is not None and (self._reply is None or self._reply.done()):
                due = self._silent_since + self.timing.silence_seconds
                if now >= due:
                    if self._reprompts_done < self.timing.reprompts:
                        self._reprompts_done += 1
                        self._silent_since = None
                        self._start_reply(nudge=REPROMPT_NUDGE)
                        continue
                    self.end("silence")
                    return
                wake = due if wake is None else min(wake, due)
            self._changed.clear()
            timeout = None if wake is None else max(0.0, wake - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    # -- the transcript --------------------------------------------------------------------

    def _append(self, turn: dict[str, Any], *, started: str | None = None) -> int:
        turn.setdefault("startedAt", started or _now_iso())
        self.transcript.append(turn)
        if turn["role"] == "user":
            turn.setdefault("endedAt", turn["startedAt"])
        return len(self.transcript) - 1

    async def _report(self) -> None:
        if self._on_turn is not None:
            try:
                await self._on_turn(self.transcript)
            except Exception:
                log.exception("saving the transcript failed")


def _keypad(digit: str) -> str:
    return f"(The callee pressed {digit} on the keypad.)"


def _is_transfer(turn: Mapping[str, Any]) -> bool:
    return turn.get("role") == "tool" and turn.get("name") == "transfer_call"


def _message_of(turn: dict[str, Any]) -> Message | None:
    """A transcript turn as the LLM saw it: what the agent said (as heard, when interrupted),
    what the callee said or pressed, a failed transfer it was told of. None for a turn that
    said nothing."""
    if _is_transfer(turn) and turn.get("transferFailed"):
        return _system(TRANSFER_FAILED_NOTE.format(result=str(turn.get("result") or "")))
    if turn.get("role") == "agent" and turn.get("text"):
        return {"role": "assistant", "content": str(turn["text"])}
    if turn.get("role") == "user":
        if turn.get("dtmf"):
            return {"role": "user", "content": _keypad(str(turn["dtmf"]))}
        if turn.get("text"):
            return {"role": "user", "content": str(turn["text"])}
    return None


def _system(content: str) -> Message:
    return {"role": "system", "content": content}
