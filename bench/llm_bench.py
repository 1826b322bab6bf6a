"""CPU per streamed chat completion on the client's side: the live turn's request three ways.

    .venv/bin/python -m bench.llm_bench [--turns 2000] [--history 60] [--rounds 3]

The fake OpenAI-compatible server of bench/conversation_bench.py runs in its own process pinned
to --server-cpu and answers every streamed request at once (role chunk, nine content chunks,
`[DONE]`). This process, pinned to --client-cpu, sends --turns requests one after another with a
history of --history messages (a long call's) and reads each answer to its end, three ways, in
turn, --rounds times:

- `shipped`: app/integrations/llm.py `LanguageModel.stream_turn` (aiohttp, events read by hand);
- `client.post`: the official client's `post(..., stream=True)`, events read by hand (the code
  before 2026-12-04, which ran it on the client's aiohttp transport);
- `create`: `chat.completions.create(stream=True)`, the SDK's chunk models iterated (the first
  version).

Both official-client ways use its default httpx transport, as post-call analysis does.

It prints, for each, the process CPU (utime + stime) per request, best round and median round:
the best round is the one least disturbed by the rest of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai

from app.config import Settings
from app.integrations.llm import LanguageModel
from bench.conversation_bench import fake_llm

Turn = Callable[[int], Awaitable[None]]


def history(length: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are Jack from the clinic. Be brief. " * 12}
    ]
    for i in range(length):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"call 1 turn {i}: a sentence of some words."})
    return messages


async def measure(turn: Turn, turns: int) -> float:
    for i in range(50):  # warm: connections made, code paths taken
        await turn(i)
    started = time.process_time()
    for i in range(turns):
        await turn(i)
    return (time.process_time() - started) / turns


async def run(port: int, args: argparse.Namespace) -> dict[str, list[float]]:
    base = f"http://127.0.0.1:{port}/v1"
    messages = history(args.history)
    shipped = LanguageModel(Settings(_env_file=None, llm_base_url=base, llm_api_key="sk-bench"))
    client = openai.AsyncOpenAI(
        base_url=base, api_key="sk-bench", timeout=httpx.Timeout(15, connect=5.0)
    )
    live = client.with_options(max_retries=0)

    def prompt(i: int) -> list[dict[str, Any]]:
        return [*messages, {"role": "user", "content": f"call 1 turn {i}: what now?"}]

    async def by_shipped(i: int) -> None:
        async for _ in shipped.stream_turn(prompt(i)):
            pass

    async def by_post(i: int) -> None:
        body = {"model": "m", "messages": prompt(i), "stream": True, "temperature": 0.4}
        response = await live.post(
            "/chat/completions", body=body, cast_to=httpx.Response, stream=True
        )
        async for line in response.aiter_lines():
            if line.startswith("data:") and not line.endswith("[DONE]"):
                json.loads(line[5:])
        await response.aclose()

    async def by_create(i: int) -> None:
        stream = await live.chat.completions.create(
            model="m",
            messages=prompt(i),  # type: ignore[arg-type]
            stream=True,
            temperature=0.4,
        )
        async for _ in stream:  # type: ignore[union-attr]
            pass

    ways: dict[str, Turn] = {"shipped": by_shipped, "client.post": by_post, "create": by_create}
    results: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(args.rounds):
            for name, turn in ways.items():
                results[name].append(await measure(turn, args.turns))
    finally:
        await shipped.aclose()
        await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000, help="requests per way and round")
    parser.add_argument("--history", type=int, default=60, help="messages before the prompt")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1, help="the fake LLM")
    args = parser.parse_args()
    import uvloop

    with fake_llm(args.server_cpu, 0.0) as (_, port):
        os.sched_setaffinity(0, {args.client_cpu})
        results = uvloop.run(run(port, args))
    print(
        f"{args.turns} streamed requests per way and round, history of {args.history} messages, "
        f"{args.rounds} rounds; client CPU per request:"
    )
    print("| way | best round | median round |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {min(values) * 1e6:.0f} µs | {statistics.median(values) * 1e6:.0f} µs |")


if __name__ == "__main__":
    main()
