"""The server's own time per conversation turn: from a ConversationRelay `prompt` received to the
first `text` token sent, minus the time the LLM took to produce its first token, with --calls
concurrent calls on one uvicorn worker.

    .venv/bin/python -m bench.conversation_bench [--calls 50] [--turns 30] [--database-url ...]

The real app (`uvicorn --factory app.main:create_app`, one worker, `--ws websockets-sansio`,
no access log; uvicorn picks uvloop and httptools) runs pinned to --server-cpu on a fresh
database migrated with Alembic (SQLite in a temp dir, or the empty database --database-url
names), seeded with one user, project and agent (max call duration a day) and --calls calls in
progress, each with its Call SID; the callee's silence timeout is an hour and reprompts are off,
so neither interferes. TWILIO_AUTH_TOKEN is set so that signatures can be checked (Twilio's REST
API is never called). LLM_BASE_URL points at a fake OpenAI-compatible server, in its own
process on --client-cpu, that answers every streamed chat completion at once with a short reply
(the role chunk and the first content chunk immediately, the others --chunk-interval-ms apart,
then `[DONE]`) and records, per request, when the whole request had arrived and when it wrote
its first content chunk. The load generator, another process on --client-cpu, plays Twilio: it
opens every relay WebSocket at once with the X-Twilio-Signature Twilio computes (base64
HMAC-SHA1 of the public wss:// URL), sends `setup`, then per turn a `prompt` naming the call and
the turn ("call 17 turn 3: ...", which the fake LLM finds in the last user message), reads the
reply up to `last: true` and pauses --pause-ms (100-300 ms, drawn per turn, like a quick callee)
before the next one. The first --warmup-turns turns of each call are not counted.

Per measured turn:

    server overhead = (first text token received - prompt sent)
                      - (LLM's first content chunk written - LLM request received)

All times are CLOCK_MONOTONIC (time.monotonic), comparable across processes. Both bench
processes take their timestamps in their raw asyncio protocols (`data_received`, just before
`transport.write`). The overhead therefore includes the loopback transit both ways (prompt to
server, server to LLM and back, token to the load generator) and the bench processes' wake-up
delays on their core: it slightly overstates the server's own time.

Prints p50/p90/p99/max of that overhead over all measured turns, turns/s, the end-to-end
prompt-to-first-token time and the LLM's own time for reference, server CPU per turn (utime +
stime from /proc/<pid>/stat over the whole run, warm-up, connection set-up and the transcript
writes included), how busy the server core was, how many connections the server opened to the
LLM, and how much of each core other processes used (/proc/stat; on a shared machine their
time slices on the server's core show up in the tail), then checks that every call's
transcript was saved whole.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import hmac
import json
import multiprocessing
import os
import random
import re
import secrets
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import httpx
from sqlalchemy import create_engine, insert, text

from bench.common import (
    Server,
    app_env,
    core_seconds,
    cpu_seconds,
    migrate,
    percentile,
    scratch,
    serve,
    sync_url,
)

PUBLIC = "https://talkstack.bench"
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "0123456789abcdef" * 2
LLM_KEY = "sk-bench-" + "0" * 40
LLM_MODEL = "gpt-4o-mini"
AGENT_NUMBER = "+14155550100"
SERVER_FLAGS = ["--workers", "1", "--ws", "websockets-sansio", "--no-access-log"]
SERVER_FLAGS += ["--log-level", "warning"]
GOAL_P50_MS = 2.0
GOAL_P99_MS = 10.0
GREETING = "Hi Sam, this is Ava from Riverside Dental. Is now a good time?"
# The fake LLM's answer, in token-like chunks (after a chunk with the assistant role).
REPLY = ["Sure", ",", " Tuesday", " at", " ten", " works", " for", " us", "."]
# What the callee says (each prompt starts with its marker, "call 17 turn 3: ").
UTTERANCES = [
    "yes, that works for me.",
    "could we do Tuesday morning instead?",
    "sorry, can you repeat that?",
    "I think my wife has the appointment card, hold on.",
    "what time do you open on Saturdays?",
    "okay, great, thank you.",
    "no, I don't need anything else.",
    "how long will the cleaning take?",
]
MARKER = re.compile(r"call (\d+) turn (\d+):")


def _uvloop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvloop is a dependency off Windows)
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _run(main: Coroutine[Any, Any, Any]) -> Any:
    with _uvloop_runner() as runner:
        return runner.run(main)


# -- the fake LLM: an OpenAI-compatible streaming chat-completions server ------------------------


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(chunk_id: str, created: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": LLM_MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return _http_chunk(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
_DONE = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class FakeLLM:
    """State shared by the fake LLM's connections: what each marked request took."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # (call, turn) -> (request received, first content chunk written), monotonic seconds.
        self.records: dict[tuple[int, int], tuple[float, float]] = {}
        self.unmarked = 0
        self.connections = 0  # opened by the server: keep-alive keeps it near the call count


class _LLMConnection(asyncio.Protocol):
    def __init__(self, llm: FakeLLM) -> None:
        self.llm = llm
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.llm.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()  # the client gave up on the stream (a cancelled reply)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, path = head.split(" ", 2)[:2]
            self.handle(method, path, body, now)

    def _json(self, status: str, value: Any) -> None:
        assert self.transport is not None
        body = json.dumps(value).encode()
        self.transport.write(
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def handle(self, method: str, path: str, body: bytes, received: float) -> None:
        if method == "GET" and path == "/records":
            records = [[*key, *value] for key, value in self.llm.records.items()]
            counts = {"unmarked": self.llm.unmarked, "connections": self.llm.connections}
            self._json("200 OK", {"records": records, **counts})
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self._json("404 Not Found", {"error": {"message": "not here", "type": "bench"}})
            return
        request = json.loads(body)
        marker = None
        for message in reversed(request.get("messages", [])):
            if message.get("role") == "user":
                marker = MARKER.match(str(message.get("content", "")))
                break
        chunk_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if not request.get("stream"):  # not used by a live turn; answered for completeness
            self._json(
                "200 OK",
                {
                    "id": chunk_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": LLM_MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(REPLY)},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
            return
        assert self.transport is not None
        first = _event(chunk_id, created, {"role": "assistant", "content": "", "refusal": None})
        self.transport.write(_SSE_HEAD + first + _event(chunk_id, created, {"content": REPLY[0]}))
        written = time.monotonic()
        if marker is None:
            self.llm.unmarked += 1
        else:
            self.llm.records[(int(marker.group(1)), int(marker.group(2)))] = (received, written)
        self._schedule(chunk_id, created, 1)

    def _schedule(self, chunk_id: str, created: int, index: int) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.llm.interval, self._next, chunk_id, created, index)

    def _next(self, chunk_id: str, created: int, index: int) -> None:
        self.timer = None
        if self.transport is None:
            return
        if index < len(REPLY):
            self.transport.write(_event(chunk_id, created, {"content": REPLY[index]}))
            self._schedule(chunk_id, created, index + 1)
        else:
            self.transport.write(_event(chunk_id, created, {}, "stop") + _DONE)


def _llm_main(cpu: int, interval: float, ready: Connection) -> None:
    os.sched_setaffinity(0, {cpu})
    gc.disable()  # a bench tool: no collector pauses counted as the server's time

    async def serve() -> None:
        llm = FakeLLM(interval)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _LLMConnection(llm), "127.0.0.1", 0, backlog=512)
        ready.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    _run(serve())


# -- the load generator: Twilio's side of each relay socket ---------------------------------------


def twilio_signature(url: str, params: dict[str, str] | None = None) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by the sorted form fields (none
    for the socket's upgrade request), what twilio's RequestValidator computes."""
    payload = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(AUTH_TOKEN.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    keys = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")
    return head + mask + masked


class _Relay(asyncio.Protocol):
    """A minimal WebSocket client: each text message is queued with the monotonic time its
    bytes arrived (taken first thing in `data_received`)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.messages: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self._fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"the relay socket closed: {exc!r}")
        if not self.opened.done():
            self.opened.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)
        self.messages.put_nowait((time.monotonic(), {"type": "closed"}))

    def handshake(self, path: str, port: int, signature: str) -> None:
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nX-Twilio-Signature: {signature}\r\n"
                "User-Agent: Twilio-ConversationRelay-Bench\r\n\r\n"
            ).encode()
        )

    def send_raw(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(0x8, (1000).to_bytes(2, "big")))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            del self.buffer[: end + 4]
            if b" 101 " not in status + b" ":
                self.opened.set_exception(ConnectionError(f"upgrade refused: {status!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            self.opened.set_result(None)
        buf = self.buffer
        while len(buf) >= 2:
            opcode, n, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                return
            fin = bool(buf[0] & 0x80)
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            self._frame_received(opcode, fin, payload, now)

    def _frame_received(self, opcode: int, fin: bool, payload: bytes, at: float) -> None:
        if opcode == 0x9:  # ping: the server's keepalive
            self.send_raw(_frame(0xA, payload))
        elif opcode == 0x8:
            if self.transport is not None:
                self.transport.close()
        elif opcode in (0x0, 0x1):
            self._fragments.append(payload)
            if fin:
                message = json.loads(b"".join(self._fragments))
                self._fragments.clear()
                self.messages.put_nowait((at, message))


@dataclass(frozen=True)
class Target:
    index: int
    call_id: str
    sid: str
    to: str


@dataclass(frozen=True)
class Plan:
    port: int
    targets: list[Target]
    turns: int
    warmup_turns: int
    pause: tuple[float, float]
    cpu: int
    seed: int


# (call, turn, prompt sent, first text token received, last token received)
Turn = tuple[int, int, float, float, float]


async def _call(plan: Plan, target: Target, rng: random.Random, out: list[Turn]) -> None:
    loop = asyncio.get_running_loop()
    _, relay = await loop.create_connection(_Relay, "127.0.0.1", plan.port)
    path = f"/twilio/calls/{target.call_id}/relay"
    relay.handshake(path, plan.port, twilio_signature(PUBLIC.replace("https://", "wss://") + path))
    await asyncio.wait_for(relay.opened, 30)
    setup = {
        "type": "setup",
        "sessionId": "VX" + secrets.token_hex(16),
        "accountSid": ACCOUNT_SID,
        "parentCallSid": "",
        "callSid": target.sid,
        "from": AGENT_NUMBER,
        "to": target.to,
        "forwardedFrom": "",
        "callType": "PSTN",
        "callerName": "",
        "direction": "outbound-api",
        "callStatus": "IN-PROGRESS",
        "customParameters": {"callId": target.call_id, "direction": "outbound"},
    }
    relay.send_raw(_frame(0x1, json.dumps(setup).encode()))
    try:
        for turn in range(plan.warmup_turns + plan.turns):
            await asyncio.sleep(rng.uniform(*plan.pause))  # the callee listens, then speaks
            words = f"call {target.index} turn {turn}: {rng.choice(UTTERANCES)}"
            prompt = {"type": "prompt", "voicePrompt": words, "lang": "en-US", "last": True}
            frame = _frame(0x1, json.dumps(prompt).encode())
            sent = time.monotonic()
            relay.send_raw(frame)
            first: float | None = None
            while True:
                at, message = await asyncio.wait_for(relay.messages.get(), 30)
                if message.get("type") != "text":
                    raise RuntimeError(f"call {target.index} turn {turn}: got {message}")
                if first is None:
                    first = at
                if message.get("last"):
                    break
            assert first is not None
            if turn >= plan.warmup_turns:
                out.append((target.index, turn, sent, first, at))
    finally:
        relay.close()
        await asyncio.wait_for(relay.closed, 10)


async def _load_async(plan: Plan) -> list[Turn]:
    out: list[Turn] = []
    rng = random.Random(plan.seed)
    tasks = [_call(plan, t, random.Random(rng.random()), out) for t in plan.targets]
    await asyncio.gather(*tasks)
    return out


def _load_main(plan: Plan) -> tuple[list[Turn], float]:
    """The measured turns, and the CPU seconds the load generator used."""
    os.sched_setaffinity(0, {plan.cpu})
    gc.disable()  # a bench tool: no collector pauses counted as the server's time
    cpu = time.process_time()
    result: list[Turn] = _run(_load_async(plan))
    return result, time.process_time() - cpu


# -- the server and its data ------------------------------------------------------------------


@contextmanager
def fake_llm(cpu: int, interval: float) -> Iterator[tuple[int, int]]:
    """The fake LLM in its own process pinned to `cpu`; yields (pid, port)."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_llm_main, args=(cpu, interval, theirs), daemon=True)
    proc.start()
    try:
        if not ours.poll(30):
            raise SystemExit("the fake LLM did not start")
        port: int = ours.recv()
        assert proc.pid is not None
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.join(10)


def bench_tools(count: int) -> list[dict[str, Any]]:
    """`count` custom tools of a realistic size (a few typed parameters each): they ride along
    with every LLM request of a turn, the cost --tools measures."""
    return [
        {
            "name": f"tool_{i}",
            "description": "Look up or change the callee's appointment in the clinic's system; "
            "use it when the callee asks about their booking.",
            "parameters": {
                "type": "object",
                "properties": {
                    "day": {"type": "string", "description": "The day, e.g. Friday"},
                    "time": {"type": "string", "description": "The time, e.g. 15:30"},
                    "patient": {"type": "string", "description": "The patient's full name"},
                    "urgent": {"type": "boolean"},
                },
                "required": ["day", "patient"],
            },
            "url": f"https://93.184.215.14/tools/{i}",
            "timeoutSeconds": 8,
        }
        for i in range(count)
    ]


def seed(url: str, calls: int, tools: int = 0) -> list[Target]:
    """One user, project and agent, and `calls` answered outbound calls with a Call SID. With
    `tools`, the agent also has that many custom tools, a transfer number, a voicemail
    message and success criteria (what an agent using every ability carries into a turn)."""
    from app.models import Agent, Call, Project, User

    engine = create_engine(sync_url(url))
    now = datetime.now(UTC)
    user_id, project_id, agent_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    targets = [
        Target(i, str(uuid.uuid4()), "CA" + secrets.token_hex(16), f"+1415555{1000 + i:04d}")
        for i in range(calls)
    ]
    instruction = "You are Ava, the scheduling assistant of Riverside Dental, calling Sam."
    abilities: dict[str, Any] = {}
    if tools:
        abilities = {
            "tools": bench_tools(tools),
            "transfer_number": "+14155550199",
            "voicemail_message": "Hi Sam, this is Ava from Riverside Dental. Please call back.",
            "success_criteria": "Sam confirmed or moved the appointment.",
        }
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            {"id": user_id, "name": "Bench", "email": f"bench-{secrets.token_hex(4)}@example.com",
             "password_hash": "x", "verified": True},
        )  # fmt: skip
        conn.execute(insert(Project), {"id": project_id, "user_id": user_id, "name": "Bench"})
        conn.execute(
            insert(Agent),
            {"id": agent_id, "project_id": project_id, "name": "Ava", "voice_id": "voice",
             "system_instruction": instruction, "first_message": GREETING,
             # Long enough never to end a call during the run.
             "max_call_duration_seconds": 24 * 3600, **abilities},
        )  # fmt: skip
        conn.execute(
            insert(Call),
            [
                {"id": uuid.UUID(t.call_id), "call_sid": t.sid, "user_id": user_id,
                 "project_id": project_id, "agent_id": agent_id, "direction": "outbound",
                 "to_number": t.to, "from_number": AGENT_NUMBER, "status": "in-progress",
                 "answered_at": now, "created_at": now, "updated_at": now,
                 "system_instruction": instruction, "first_message": GREETING,
                 "dynamic_variables": {"name": "Sam"}}
                for t in targets
            ],
        )  # fmt: skip
    engine.dispose()
    return targets


def saved_transcripts(url: str, expected: int, within: float = 15.0) -> tuple[int, int]:
    """How many calls have a transcript of `expected` turns (the server saves the last one after
    its socket closed: wait for it); returns (whole, calls)."""
    engine = create_engine(sync_url(url))
    deadline = time.monotonic() + within
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT transcript FROM calls")).all()
            lengths = [len(r[0] if isinstance(r[0], list) else json.loads(r[0])) for r in rows]
            whole = sum(n == expected for n in lengths)
            if whole == len(rows) or time.monotonic() > deadline:
                return whole, len(rows)
            time.sleep(0.2)
    finally:
        engine.dispose()


# -- the numbers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    overhead: list[float]  # seconds, per measured turn
    end_to_end: list[float]  # prompt sent -> first text token received
    llm: list[float]  # the LLM's request received -> first content chunk written
    turns_per_second: float
    cpu_per_turn: float  # server CPU seconds per turn (warm-up turns included)
    busy: float  # share of the server core used over the run
    server_core_others: float  # share of the server core used by other processes
    llm_busy: float  # share of the client core used by the fake LLM
    load_busy: float  # ... by the load generator
    client_core_others: float  # ... by other processes
    llm_requests: int
    llm_connections: int  # the server opened to the LLM: keep-alive reuses them


def measure(
    args: argparse.Namespace, server: Server, llm: tuple[int, int], targets: list[Target]
) -> Measured:
    llm_pid, llm_port = llm
    plan = Plan(
        port=server.port,
        targets=targets,
        turns=args.turns,
        warmup_turns=args.warmup_turns,
        pause=(args.pause_ms[0] / 1000, args.pause_ms[1] / 1000),
        cpu=args.client_cpu,
        seed=args.seed,
    )
    ctx = multiprocessing.get_context("spawn")
    cores = (args.server_cpu, args.client_cpu)
    before = [server.cpu_seconds(), cpu_seconds(llm_pid), *map(core_seconds, cores)]
    t0 = time.monotonic()
    with ctx.Pool(1) as pool:
        turns, load_cpu = pool.apply(_load_main, (plan,))
    elapsed = time.monotonic() - t0
    after = [server.cpu_seconds(), cpu_seconds(llm_pid), *map(core_seconds, cores)]
    cpu, llm_cpu, server_core, client_core = (b - a for a, b in zip(before, after, strict=True))
    answer = httpx.get(f"http://127.0.0.1:{llm_port}/records", timeout=10).json()
    records = {(c, t): (received, written) for c, t, received, written in answer["records"]}
    missing = [(c, t) for c, t, *_ in turns if (c, t) not in records]
    if missing or answer["unmarked"]:
        raise SystemExit(f"LLM requests not found for {missing[:5]}; unmarked {answer['unmarked']}")
    overhead, end_to_end, llm_own = [], [], []
    for c, t, sent, first, _ in turns:
        received, written = records[(c, t)]
        end_to_end.append(first - sent)
        llm_own.append(written - received)
        overhead.append(end_to_end[-1] - llm_own[-1])
    window = max(t[4] for t in turns) - min(t[2] for t in turns)
    total = len(targets) * (args.turns + args.warmup_turns)
    return Measured(
        overhead=overhead,
        end_to_end=end_to_end,
        llm=llm_own,
        turns_per_second=len(turns) / window,
        cpu_per_turn=cpu / total,
        busy=cpu / elapsed,
        server_core_others=max(0.0, server_core - cpu) / elapsed,
        llm_busy=llm_cpu / elapsed,
        load_busy=load_cpu / elapsed,
        client_core_others=max(0.0, client_core - llm_cpu - load_cpu) / elapsed,
        llm_requests=len(answer["records"]),
        llm_connections=answer["connections"],
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(database: str, calls: int, m: Measured) -> bool:
    o = m.overhead
    p50, p99 = percentile(o, 50), percentile(o, 99)
    print(
        f"\nserver overhead per turn over {len(o)} measured turns:"
        f" p50 {ms(p50)}  p90 {ms(percentile(o, 90))}  p99 {ms(p99)}  max {ms(max(o))}\n"
        "  = (first text token received - prompt sent) - (LLM first chunk written - LLM request"
        " received);\n"
        "  it includes loopback transit both ways and the bench processes' wake-ups, so it"
        " slightly overstates the server's own time\n"
        f"prompt -> first token (end to end): p50 {ms(percentile(m.end_to_end, 50))}"
        f"  p99 {ms(percentile(m.end_to_end, 99))}\n"
        f"LLM's own time to first chunk: p50 {ms(percentile(m.llm, 50))}"
        f"  p99 {ms(percentile(m.llm, 99))}\n"
        f"{m.turns_per_second:.0f} turns/s; server cpu {m.busy:.0%} of its core,"
        f" {m.cpu_per_turn * 1e6:.0f} us/turn\n"
        f"{m.llm_requests} LLM requests over {m.llm_connections} connections opened by the server\n"
        f"other processes used {m.server_core_others:.0%} of the server's core; the client core:"
        f" load generator {m.load_busy:.0%}, fake LLM {m.llm_busy:.0%},"
        f" other processes {m.client_core_others:.0%}"
    )
    print()
    print(
        "| database | calls | measured turns | turns/s | p50 | p90 | p99 | max "
        "| prompt→first token p50 | server CPU / turn | server core busy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {database} | {calls} | {len(o)} | {m.turns_per_second:.0f} | {ms(p50)} "
        f"| {ms(percentile(o, 90))} | {ms(p99)} | {ms(max(o))} "
        f"| {ms(percentile(m.end_to_end, 50))} | {m.cpu_per_turn * 1e6:.0f} µs | {m.busy:.0%} |"
    )
    met = p50 < GOAL_P50_MS / 1000 and p99 < GOAL_P99_MS / 1000
    verdict = "met" if met else "NOT met"
    print(f"\ngoal (p50 < {GOAL_P50_MS:g} ms and p99 < {GOAL_P99_MS:g} ms): {verdict}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="concurrent calls")
    parser.add_argument("--turns", type=int, default=30, help="measured turns per call")
    parser.add_argument("--warmup-turns", type=int, default=3, help="uncounted turns per call")
    parser.add_argument(
        "--pause-ms", type=float, nargs=2, default=[100.0, 300.0], metavar=("MIN", "MAX"),
        help="the callee's pause before each prompt, uniformly drawn",
    )  # fmt: skip
    parser.add_argument(
        "--chunk-interval-ms", type=float, default=10.0, help="between the LLM's chunks"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1, help="fake LLM and load generator")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (log, database)")
    parser.add_argument(
        "--database-url", help="instead of SQLite in the temp dir, e.g. an empty PostgreSQL db"
    )
    parser.add_argument(
        "--tools",
        type=int,
        default=0,
        help="give the agent this many custom tools, a transfer number, a voicemail message "
        "and success criteria",
    )
    args = parser.parse_args()

    with scratch("talkstack-conversation-bench-", keep=args.keep, kept="log and database") as tmp:
        run_bench(args, tmp)


def run_bench(args: argparse.Namespace, tmp: Path) -> None:
    url = args.database_url or f"sqlite:///{tmp}/bench.db"
    env = app_env(
        url,
        tmp,
        drop=("SMTP_", "TWILIO_", "LLM_", "CONVERSATION_", "REDIS_", "JOB_", "RUN_JOBS"),
        PUBLIC_BASE_URL=PUBLIC,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_API_BASE_URL="http://127.0.0.1:9",  # never called during a relay session
        LLM_API_KEY=LLM_KEY,
        LLM_MODEL=LLM_MODEL,
        # Neither the callee's silence nor a reprompt may interfere with the turns.
        CONVERSATION_SILENCE_SECONDS="3600",
        CONVERSATION_REPROMPTS="0",
        # The post-call analysis jobs stay queued: nothing competes for the server core.
        RUN_JOBS_IN_PROCESS="false",
    )
    migrate(env)
    targets = seed(url, args.calls, args.tools)
    database = url.split(":", 1)[0].split("+", 1)[0]
    print(
        f"{database}; one uvicorn worker on cpu {args.server_cpu} (--ws websockets-sansio);"
        f" fake LLM and load generator on cpu {args.client_cpu}\n"
        f"{args.calls} concurrent calls, agent with {args.tools} custom tools"
        f"{' (+ transfer_call, press_digits, end_call)' if args.tools else ''},"
        f" {args.warmup_turns} warm-up + {args.turns} measured"
        f" turns each; callee pauses {args.pause_ms[0]:g}-{args.pause_ms[1]:g} ms;"
        f" LLM reply of {len(REPLY)} chunks, first at once, then every"
        f" {args.chunk_interval_ms:g} ms",
        flush=True,
    )
    log = tmp / "server.log"
    with fake_llm(args.client_cpu, args.chunk_interval_ms / 1000) as llm:
        env["LLM_BASE_URL"] = f"http://127.0.0.1:{llm[1]}/v1"
        with serve(
            "app.main:create_app", env, args.server_cpu, log, flags=SERVER_FLAGS, start_timeout=60
        ) as server:
            measured = measure(args, server, llm, targets)
            # Greeting, then a callee turn and an agent turn per prompt.
            expected = 1 + 2 * (args.warmup_turns + args.turns)
            whole, calls = saved_transcripts(url, expected)
    report(database, args.calls, measured)
    print(f"transcripts saved whole: {whole} of {calls} calls ({expected} turns each)")
    if whole != calls:
        print(log.read_text(errors="replace")[-4000:])
        raise SystemExit("some transcripts were not saved whole")


if __name__ == "__main__":
    main()
