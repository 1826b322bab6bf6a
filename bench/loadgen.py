"""A small closed-loop HTTP/1.1 load generator: keep-alive connections, fixed concurrency,
warm-up, fixed duration. Raw asyncio streams and a minimal response parser, so one client core
can keep a one-core Python server busy (check `server_cpu` in the results: near 100% means the
server, not the client, is the bottleneck).

Each worker process pins itself to the given CPUs and runs `connections` loops, each sending a
request as soon as the previous answer arrived.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from array import array
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    host: str
    port: int
    path: str
    headers: dict[str, str]
    connections: int = 32
    processes: int = 1
    warmup: float = 2.0
    duration: float = 10.0
    cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Result:
    requests: int  # answered 200 in the measured window
    errors: int  # answered something else in the measured window
    seconds: float
    latencies: array[float]  # seconds, one per measured request
    total: int  # every answer, warm-up included: what the server's CPU time was spent on

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _request_bytes(load: Load) -> bytes:
    lines = [f"GET {load.path} HTTP/1.1", f"Host: {load.host}:{load.port}"]
    lines += [f"{k}: {v}" for k, v in load.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response off a keep-alive connection: its head, the body read and dropped
    (the length from Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return head


async def _connection(
    load: Load, request: bytes, t_measure: float, t_end: float, out: array[float]
) -> tuple[int, int, int]:
    reader, writer = await asyncio.open_connection(load.host, load.port)
    ok = errors = total = 0
    clock = time.perf_counter
    try:
        while True:
            start = clock()
            if start >= t_end:
                break
            writer.write(request)
            head = await read_response(reader)
            done = clock()
            total += 1
            if start >= t_measure:
                if head.startswith(b"HTTP/1.1 200"):
                    ok += 1
                    out.append(done - start)
                else:
                    errors += 1
    finally:
        writer.close()
    return ok, errors, total


async def _worker_async(load: Load, connections: int) -> tuple[int, int, int, array[float]]:
    request = _request_bytes(load)
    now = time.perf_counter()
    t_measure = now + load.warmup
    t_end = t_measure + load.duration
    latencies: array[float] = array("d")
    tasks = [_connection(load, request, t_measure, t_end, latencies) for _ in range(connections)]
    results = await asyncio.wait_for(asyncio.gather(*tasks), load.warmup + load.duration + 30)
    ok, errors, total = (sum(r[i] for r in results) for i in range(3))
    return ok, errors, total, latencies


def _worker(args: tuple[Load, int]) -> tuple[int, int, int, bytes]:
    load, connections = args
    if load.cpus:
        os.sched_setaffinity(0, load.cpus)
    ok, errors, total, latencies = asyncio.run(_worker_async(load, connections))
    return ok, errors, total, latencies.tobytes()


def run(load: Load) -> Result:
    """Runs the load from `processes` fresh processes; returns the measured window only."""
    per_process = [load.connections // load.processes] * load.processes
    for i in range(load.connections % load.processes):
        per_process[i] += 1
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(load.processes) as pool:
        parts = pool.map(_worker, [(load, n) for n in per_process if n])
    latencies: array[float] = array("d")
    for part in parts:
        latencies.frombytes(part[3])
    return Result(
        requests=sum(p[0] for p in parts),
        errors=sum(p[1] for p in parts),
        seconds=load.duration,
        latencies=latencies,
        total=sum(p[2] for p in parts),
    )
