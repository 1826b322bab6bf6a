"""Twilio status callbacks: how many one uvicorn worker ingests per second, signature checked,
on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.callback_bench [--duration 10] [--connections 32] [--database both]

Seeds --calls calls (with a Call SID, status queued) in a project that has a webhook URL and
secret, so every status change enqueues a `webhook.call_event` job as in production (the job
worker is off: RUN_JOBS_IN_PROCESS=false, the jobs stay queued). One uvicorn worker serves the
app on --server-cpu (uvloop and httptools); the load generator runs on --client-cpus: keep-alive
connections, each walking its own calls through Twilio's progress callbacks in order (initiated,
ringing, in-progress, completed with CallDuration), every request signed as Twilio signs it
(HMAC-SHA1 of PUBLIC_BASE_URL + path + the sorted fields, base64) with the form fields Twilio
sends (SequenceNumber, Timestamp, the geographic fields...). Warm-up, then a fixed window.
Prints req/s, p50/p99, how busy the server core was and its CPU per request, then checks the
database: every answered callback moved its call, and queued one webhook job (plus a price job
per completed call).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import multiprocessing
import os
import secrets
import time
import uuid
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import create_engine, insert, text

from app.models import Agent, Call, Project, User
from bench.common import (
    Measured,
    add_load_arguments,
    app_env,
    create_database,
    drop_database,
    migrate,
    report,
    scratch,
    serve,
    sync_url,
)
from bench.loadgen import Result, read_response

PG_DATABASE = "talkstack_bench_callbacks"
PUBLIC = "https://talkstack.example.com"
ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "f" * 32
AGENT_NUMBER = "+14155550100"
WEBHOOK = "https://hooks.example.com/talkstack/calls"
SERVER_FLAGS = ["--workers", "1", "--no-access-log", "--log-level", "warning"]
WIDTH = 11  # of the database column
PROGRESS = ("initiated", "ringing", "in-progress", "completed")
# What Twilio adds about where each party is (both numbers are in San Francisco here).
GEO = {
    f"{who}{field}": value
    for who in ("Called", "Caller", "From", "To")
    for field, value in (("City", "SAN FRANCISCO"), ("Country", "US"), ("State", "CA"),
                         ("Zip", "94105"))
}  # fmt: skip


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL followed by each field's name and value,
    fields sorted by name (what twilio's RequestValidator.compute_signature does)."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Target:
    call_id: str
    sid: str
    to: str


def status_request(host: str, target: Target, sequence: int, when: str) -> bytes:
    status = PROGRESS[sequence]
    path = f"/twilio/calls/{target.call_id}/status"
    params = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": target.sid,
        "CallStatus": status,
        "Called": target.to,
        "Caller": AGENT_NUMBER,
        "CallbackSource": "call-progress-events",
        "Direction": "outbound-api",
        "From": AGENT_NUMBER,
        "SequenceNumber": str(sequence),
        "Timestamp": when,
        "To": target.to,
        **GEO,
    }
    if status == "completed":
        params.update(CallDuration="37", Duration="1", SipResponseCode="200")
    body = urlencode(params).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "User-Agent: TwilioProxy/1.1\r\nAccept: */*\r\nCache-Control: max-age=259200\r\n"
        f"I-Twilio-Idempotency-Token: {uuid.uuid4()}\r\nX-Home-Region: us1\r\n"
        f"X-Twilio-Signature: {twilio_signature(AUTH_TOKEN, PUBLIC + path, params)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- the load generator: a closed loop per connection, in processes pinned to the client cpus --


@dataclass(frozen=True)
class Load:
    port: int
    targets: list[list[Target]]  # per connection, in order
    warmup: float
    duration: float
    cpus: tuple[int, ...]


async def _connection(
    port: int, targets: list[Target], t_measure: float, t_end: float, out: array[float]
) -> tuple[int, int, int, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    host = f"127.0.0.1:{port}"
    ok = errors = total = 0
    clock = time.perf_counter
    try:
        for target in targets:
            for sequence in range(len(PROGRESS)):
                when = format_datetime(datetime.now(UTC).replace(microsecond=0))
                request = status_request(host, target, sequence, when)
                start = clock()
                if start >= t_end:
                    return ok, errors, total, False
                writer.write(request)
                head = await read_response(reader)
                done = clock()
                total += 1
                if start >= t_measure:
                    if head.startswith(b"HTTP/1.1 204"):
                        ok += 1
                        out.append(done - start)
                    else:
                        errors += 1
        return ok, errors, total, True  # ran out of calls before the end
    finally:
        writer.close()


async def _worker_async(
    port: int, per_connection: list[list[Target]], warmup: float, duration: float
) -> tuple[int, int, int, int, array[float]]:
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + duration
    latencies: array[float] = array("d")
    tasks = [_connection(port, t, t_measure, t_end, latencies) for t in per_connection]
    results = await asyncio.wait_for(asyncio.gather(*tasks), warmup + duration + 60)
    ok, errors, total, starved = (sum(r[i] for r in results) for i in range(4))
    return ok, errors, total, starved, latencies


def _worker(args: tuple[Load, list[list[Target]]]) -> tuple[int, int, int, int, bytes]:
    load, per_connection = args
    if load.cpus:
        os.sched_setaffinity(0, load.cpus)
    ok, errors, total, starved, latencies = asyncio.run(
        _worker_async(load.port, per_connection, load.warmup, load.duration)
    )
    return ok, errors, total, starved, latencies.tobytes()


def run_load(load: Load, processes: int) -> tuple[Result, int]:
    groups = [load.targets[i::processes] for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        parts = pool.map(_worker, [(load, g) for g in groups if g])
    latencies: array[float] = array("d")
    for part in parts:
        latencies.frombytes(part[4])
    result = Result(
        requests=sum(p[0] for p in parts),
        errors=sum(p[1] for p in parts),
        seconds=load.duration,
        latencies=latencies,
        total=sum(p[2] for p in parts),
    )
    return result, sum(p[3] for p in parts)


# -- the data ----------------------------------------------------------------------------------


def seed(url: str, calls: int) -> list[Target]:
    """One user, a project with a webhook, an agent and `calls` queued calls with a SID."""
    engine = create_engine(sync_url(url))
    now = datetime.now(UTC)
    user_id, project_id, agent_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    targets = [
        Target(str(uuid.uuid4()), "CA" + secrets.token_hex(16), f"+1415{5550200 + i % 9000:07d}")
        for i in range(calls)
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            {"id": user_id, "name": "Bench", "email": "bench@example.com", "password_hash": "x",
             "verified": True},
        )  # fmt: skip
        conn.execute(
            insert(Project),
            {"id": project_id, "user_id": user_id, "name": "Bench", "call_status_webhook": WEBHOOK,
             "webhook_secret": secrets.token_hex(24)},
        )  # fmt: skip
        conn.execute(
            insert(Agent),
            {"id": agent_id, "project_id": project_id, "name": "Ava", "voice_id": "voice",
             "system_instruction": "You are Ava, a friendly scheduling assistant."},
        )  # fmt: skip
        conn.execute(
            insert(Call),
            [
                {"id": uuid.UUID(t.call_id), "call_sid": t.sid, "user_id": user_id,
                 "project_id": project_id, "agent_id": agent_id, "to_number": t.to,
                 "from_number": AGENT_NUMBER, "status": "queued", "created_at": now,
                 "updated_at": now, "system_instruction": "You are Ava, calling Sam.",
                 "first_message": "Hi, this is Ava.", "dynamic_variables": {"name": "Sam"}}
                for t in targets
            ],
        )  # fmt: skip
    engine.dispose()
    return targets


def check(url: str, answered: int) -> None:
    """What the callbacks did to the database, next to what they should have done."""
    engine = create_engine(sync_url(url))
    with engine.connect() as conn:
        statuses: dict[str, int] = dict(
            conn.execute(text("SELECT status, count(*) FROM calls GROUP BY status")).all()
        )
        jobs: dict[str, int] = dict(
            conn.execute(text("SELECT kind, count(*) FROM jobs GROUP BY kind")).all()
        )
    engine.dispose()
    moved = sum(n * (PROGRESS.index(s) + 1) for s, n in statuses.items() if s in PROGRESS)
    print(
        f"  database: calls by status {statuses}; jobs {jobs}\n"
        f"  {answered} callbacks answered 204, {moved} status changes stored, "
        f"{jobs.get('webhook.call_event', 0)} webhook jobs, "
        f"{jobs.get('call.price', 0)} price jobs for {statuses.get('completed', 0)} completed"
    )
    # The last request of each connection may be cut off by the end of the window.
    assert abs(moved - answered) <= 64, (moved, answered)
    assert jobs.get("webhook.call_event", 0) == moved
    assert jobs.get("call.price", 0) == statuses.get("completed", 0)


def bench_one(database: str, args: argparse.Namespace, tmp: Path) -> Measured:
    url = f"sqlite:///{tmp}/bench.db" if database == "sqlite" else create_database(PG_DATABASE)
    try:
        env = app_env(
            url,
            tmp,
            PUBLIC_BASE_URL=PUBLIC,
            TWILIO_ACCOUNT_SID=ACCOUNT_SID,
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            # The jobs stay queued: no delivery competes for the core, none goes out.
            RUN_JOBS_IN_PROCESS="false",
        )
        migrate(env)
        t0 = time.monotonic()
        targets = seed(url, args.calls)
        print(f"{database}: seeded {len(targets):,} calls in {time.monotonic() - t0:.1f}s")
        per_connection = [targets[i :: args.connections] for i in range(args.connections)]
        log = tmp / f"{database}.log"
        with serve("app.main:create_app", env, args.server_cpu, log, flags=SERVER_FLAGS) as server:
            load = Load(
                server.port, per_connection, args.warmup, args.duration, tuple(args.client_cpus)
            )
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            result, starved = run_load(load, args.processes)
            cpu = server.cpu_seconds() - cpu0
            elapsed = time.monotonic() - t0
        if starved:
            raise SystemExit(f"{starved} connections ran out of calls: raise --calls")
        measured = Measured(result, cpu / elapsed, cpu / max(result.total, 1))
        report(database, measured, WIDTH)
        check(url, result.total)
        return measured
    finally:
        if database == "postgresql" and not args.keep:
            drop_database(PG_DATABASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--calls", type=int, default=60_000, help="seeded calls (4 callbacks each)")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and the PG db")
    args = parser.parse_args()

    # The load generator signs as Twilio does: check it against Twilio's own code first.
    from twilio.request_validator import RequestValidator

    sample = {"CallSid": "CA1", "CallStatus": "ringing", "To": "+14155550123", "A": "x y&z"}
    url = PUBLIC + "/twilio/calls/1/status"
    assert twilio_signature(AUTH_TOKEN, url, sample) == RequestValidator(
        AUTH_TOKEN
    ).compute_signature(url, sample)

    print(
        f"one uvicorn worker on cpu {args.server_cpu}, load generator on cpus "
        f"{args.client_cpus}; {args.connections} connections, "
        f"{args.warmup:g}s warm-up + {args.duration:g}s measured"
    )
    kept = "logs and the SQLite database"
    with scratch("talkstack-callback-bench-", keep=args.keep, kept=kept) as tmp:
        databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
        results = {db: bench_one(db, args, tmp) for db in databases}
        print()
        print("| database | req/s | p50 | p99 | errors | server CPU / request | server core busy |")
        print("|---|---|---|---|---|---|---|")
        for db, m in results.items():
            r = m.result
            print(
                f"| {db} | {r.rps:.0f} | {r.percentile(50) * 1000:.1f} ms "
                f"| {r.percentile(99) * 1000:.1f} ms | {r.errors} "
                f"| {m.cpu_per_request * 1e6:.0f} µs | {m.busy:.0%} |"
            )


if __name__ == "__main__":
    main()
