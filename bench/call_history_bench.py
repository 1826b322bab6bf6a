"""Call history on a big project: POST /call/get-call-history, first page and 10,000 calls deep,
on PostgreSQL with 1,000,000 calls in the project.

    .venv/bin/python -m bench.call_history_bench [--calls 1000000] [--repeat 300] [--keep]

Creates the database `talkstack_bench_history` (dropped and created again on each run; with
--keep it is left in place afterwards, and the next --keep run reuses it without seeding), runs
the Alembic migrations, seeds one user, project and agent and --calls calls in that project with
one INSERT ... SELECT generate_series (plus a quarter as many in 20 other projects, interleaved
in the same heap pages), then VACUUM ANALYZE.

The app runs in this process (create_app through httpx's ASGI transport, x-api-key auth).
"Server" time is measured around the ASGI app call: the app's own time per request (auth,
project lookup, the history query, building and serialising the page), without the client.
"SQL" is the history statement's execute alone. The deep page's token is obtained by walking
the pages as a client does (and checked against OFFSET 10000). First and deep page requests
alternate, so both see the same machine. Prints p50/p99 per case and EXPLAIN (ANALYZE, BUFFERS)
of the exact SQL the app sent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from sqlalchemy import event

from app.config import Settings
from app.context import AppContext
from app.main import create_app
from bench.common import ROOT, create_database, db_url, drop_database, percentile

DEEP = 10_000
HOT_TO = "+14155550000"  # one number called again and again: 3% of the project's calls
AGENT_FROM = ["+14155551001", "+14155551002", "+14155551003"]
SPAN_SECONDS = 2 * 365 * 86400  # the calls spread over two years
START = "2024-06-01 00:00:00+00"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SYSTEM = (
    "You are Ava, a friendly scheduling assistant for Bright Smile Dental. You are calling Sam "
    "to confirm the appointment on Tuesday. Be brief and polite; if they want to reschedule, "
    "offer the next two free slots and confirm the one they pick. Never give medical advice. "
    "If you reach voicemail, leave a short message with the clinic's number."
)
TRANSCRIPT = (
    '[{"role":"agent","text":"Hi, this is Ava from Bright Smile Dental. Am I speaking with '
    'Sam?"},{"role":"user","text":"Yes, speaking."},{"role":"agent","text":"I am calling to '
    'confirm your appointment on Tuesday at 10 am. Does that still work for you?"},'
    '{"role":"user","text":"Yes, that is fine, thanks."},{"role":"agent","text":"Great, see '
    'you then. Goodbye!"}]'
)

# Call i started at about START + i/total * two years (rows are written in time order, as in
# production), with up to a minute of jitter; every fifth call belongs to one of 20 other
# projects. Statuses: mostly completed, the usual share of no-answer, busy, voicemail...;
# the newest few are still in progress. To: 3% to one hot number, the rest over 400,000
# numbers. From: the agent's three numbers.
SEED_CALLS = """
INSERT INTO calls (id, call_sid, user_id, project_id, agent_id, direction, to_number,
    from_number, status, answered_by, ended_reason, seconds, cost, cost_unit, recording_urls,
    dynamic_variables, system_instruction, first_message, data, transcript, last_sequence,
    answered_at, ended_at, created_at, updated_at)
SELECT gen_random_uuid(), 'CA' || md5(%(salt)s || g.i::text),
    CASE WHEN g.mine THEN %(user)s::uuid ELSE %(other_user)s::uuid END,
    CASE WHEN g.mine THEN %(project)s::uuid ELSE (%(others)s::uuid[])[1 + g.i %% 20] END,
    CASE WHEN g.mine THEN %(agent)s::uuid END,
    'outbound', g.to_number, (%(from)s::text[])[1 + g.i %% 3], g.status,
    CASE g.status WHEN 'completed' THEN 'human' WHEN 'voicemail' THEN 'machine_end_beep' END,
    CASE WHEN g.seconds IS NOT NULL THEN g.status END,
    g.seconds,
    CASE WHEN g.seconds > 0 THEN round(0.014 * ceil(g.seconds / 60.0), 5) END,
    CASE WHEN g.seconds > 0 THEN 'USD' END,
    (CASE WHEN g.seconds > 0 THEN '["https://api.twilio.com/2010-04-01/Accounts/AC0/Recordings/RE'
        || md5(g.i::text) || '.mp3"]' ELSE '[]' END)::json,
    '{"name":"Sam","day":"Tuesday"}'::json, %(system)s,
    'Hi, this is Ava from Bright Smile Dental.', '{}'::json,
    (CASE WHEN g.status = 'completed' THEN %(transcript)s ELSE '[]' END)::json,
    CASE WHEN g.seconds IS NOT NULL THEN 4 ELSE 2 END,
    CASE WHEN g.seconds > 0 THEN g.created_at + interval '12 seconds' END,
    CASE WHEN g.seconds IS NOT NULL THEN g.created_at + make_interval(secs => 12 + g.seconds) END,
    g.created_at,
    g.created_at + make_interval(secs => 12 + coalesce(g.seconds, 0))
FROM (
    SELECT s.i, s.i %% 5 <> 0 AS mine, r.created_at,
        CASE WHEN r.a < 0.03 THEN %(hot)s
            ELSE '+1' || (2012000000 + floor(r.b * 400000)::bigint)::text END AS to_number,
        st.status,
        CASE st.status WHEN 'completed' THEN 20 + floor(r.d * 280)::int
            WHEN 'voicemail' THEN 25 WHEN 'silence' THEN 9
            WHEN 'in-progress' THEN NULL ELSE 0 END AS seconds
    FROM generate_series(1, %(total)s) AS s(i)
    CROSS JOIN LATERAL (
        SELECT random() AS a, random() AS b, random() AS c, random() AS d,
            %(start)s::timestamptz + make_interval(
                secs => s.i::float8 / %(total)s * %(span)s + random() * 60) AS created_at
    ) r
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.i > %(total)s - 25 THEN 'in-progress'
            WHEN r.c < 0.58 THEN 'completed' WHEN r.c < 0.72 THEN 'no-answer'
            WHEN r.c < 0.80 THEN 'busy' WHEN r.c < 0.89 THEN 'voicemail'
            WHEN r.c < 0.93 THEN 'failed' WHEN r.c < 0.96 THEN 'canceled'
            ELSE 'silence' END AS status
    ) st
) g
"""


def run_migrations(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")


@dataclass(frozen=True)
class Seeded:
    project_id: str
    api_key: str
    typical_to: str


def seeded_already(name: str) -> Seeded | None:
    """The seed of an earlier --keep run, if that database is there and complete."""
    try:
        conn = psycopg.connect(db_url(name), autocommit=True)
    except psycopg.OperationalError:
        return None
    with conn:
        try:
            row = conn.execute("SELECT project_id, api_key, typical_to FROM bench_seed").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return Seeded(str(row[0]), row[1], row[2]) if row else None


def seed(name: str, calls: int) -> Seeded:
    url = create_database(name)
    t0 = time.monotonic()
    run_migrations(url)
    print(f"migrated in {time.monotonic() - t0:.1f}s")

    key = secrets.token_hex(32)
    user, other_user = uuid.uuid4(), uuid.uuid4()
    project, agent = uuid.uuid4(), uuid.uuid4()
    others = [uuid.uuid4() for _ in range(20)]
    total = calls * 5 // 4  # every fifth call is another project's
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        for uid, email, key_hash in (
            (user, "bench@example.com", hashlib.sha256(key.encode()).hexdigest()),
            (other_user, "other@example.com", None),
        ):
            conn.execute(
                "INSERT INTO users (id, name, email, password_hash, verified, token_version,"
                " api_key_hash, verification_failed_attempts, created_at, updated_at)"
                " VALUES (%s, 'Bench', %s, 'x', true, 0, %s, 0, now(), now())",
                (uid, email, key_hash),
            )
        for pid, uid, pname in [(project, user, "Bench")] + [
            (p, other_user, f"Other {n}") for n, p in enumerate(others)
        ]:
            conn.execute(
                "INSERT INTO projects (id, user_id, name, description, status, is_deleted,"
                " call_status_webhook, created_at, updated_at)"
                " VALUES (%s, %s, %s, '', 'ACTIVE', false, NULL, %s::timestamptz, now())",
                (pid, uid, pname, START),
            )
        conn.execute(
            "INSERT INTO agents (id, project_id, name, system_instruction, voice_id, language,"
            " max_call_duration_seconds, analysis_questions, is_deleted, created_at, updated_at)"
            " VALUES (%s, %s, 'Ava', %s, 'voice', 'en-US', 600, '[]', false, now(), now())",
            (agent, project, SYSTEM),
        )
        # Built after the load, from the migration's own definitions: one sort per index
        # instead of a million random inserts into each.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'calls'"
            " AND indexname LIKE 'ix_calls_%%'"
        ).fetchall()
        for index_name, _ in indexes:
            conn.execute(f'DROP INDEX "{index_name}"')
        t0 = time.monotonic()
        conn.execute(
            SEED_CALLS,
            {
                "salt": secrets.token_hex(4),
                "user": user,
                "other_user": other_user,
                "project": project,
                "others": others,
                "agent": agent,
                "from": AGENT_FROM,
                "hot": HOT_TO,
                "system": SYSTEM,
                "transcript": TRANSCRIPT,
                "total": total,
                "span": SPAN_SECONDS,
                "start": START,
            },
        )
        print(f"inserted {total:,} calls in {time.monotonic() - t0:.1f}s")
        t0 = time.monotonic()
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE")
        print(f"indexes, VACUUM ANALYZE in {time.monotonic() - t0:.1f}s")
        typical = conn.execute(
            "SELECT to_number FROM calls WHERE project_id = %s AND to_number <> %s"
            " ORDER BY created_at DESC LIMIT 1",
            (project, HOT_TO),
        ).fetchone()
        assert typical is not None
        seeded = Seeded(str(project), key, typical[0])
        conn.execute("CREATE TABLE bench_seed (project_id uuid, api_key text, typical_to text)")
        conn.execute(
            "INSERT INTO bench_seed VALUES (%s, %s, %s)",
            (project, seeded.api_key, seeded.typical_to),
        )
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE project_id = %s), count(*),"
            " pg_size_pretty(pg_total_relation_size('calls')) FROM calls",
            (project,),
        ).fetchone()
        assert counts is not None
        print(f"calls: {counts[0]:,} in the project, {counts[1]:,} in all; {counts[2]} on disk")
    return seeded


class Timed:
    """The app, timed from the ASGI call to its return (every byte of the answer sent)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.last = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.last = time.perf_counter() - t0


class SqlClock:
    """Times the history SELECT's execute and keeps its last SQL and parameters."""

    def __init__(self, ctx: AppContext) -> None:
        self.last = 0.0
        self.statement = ""
        self.parameters: Any = None
        self._t0 = 0.0
        engine = ctx.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    @staticmethod
    def _is_history(statement: str) -> bool:
        return "FROM calls" in statement and "ORDER BY" in statement

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self._is_history(statement):
            self._t0 = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self._is_history(statement):
            self.last = time.perf_counter() - self._t0
            self.statement, self.parameters = statement, parameters


@dataclass(frozen=True)
class Case:
    label: str
    params: dict[str, str]
    deep: bool  # whether the filter matches enough calls for a page 10,000 deep


async def walk_to(
    client: httpx.AsyncClient, body: dict[str, Any], params: dict[str, str], depth: int
) -> str | None:
    """The nextPageToken after `depth` calls, fetched page by page; None if there are fewer."""
    seen, token = 0, None
    while seen < depth:
        page = {**body, "pageToken": token} if token else body
        r = await client.post("/call/get-call-history", json=page, params=params)
        r.raise_for_status()
        data = r.json()
        seen += len(data["calls"])
        token = data["nextPageToken"]
        if not token:
            print(f"{params}: fewer than {depth + 1} calls, no deep page")
            return None
    assert seen == depth
    return str(token)


def utc_day(day: str, plus: int) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=plus)


def offset_sid(url: str, project_id: str, params: dict[str, str], offset: int) -> str:
    where: list[str] = ["project_id = %s"]
    args: list[Any] = [project_id]
    for name, column in (("to", "to_number"), ("status", "status"), ("from", "from_number")):
        if name in params:
            where.append(f"{column} = %s")
            args.append(params[name])
    # The date filters as the contract says: UTC days, "before"/"after" include the day.
    for prefix, column in (("start", "created_at"), ("end", "ended_at")):
        for suffix, op, days in (("TimeAfter", ">=", 0), ("TimeBefore", "<", 1)):
            if prefix + suffix in params:
                where.append(f"{column} {op} %s")
                args.append(utc_day(params[prefix + suffix], days))
        if prefix + "Time" in params:
            where.append(f"{column} >= %s AND {column} < %s")
            args += [utc_day(params[prefix + "Time"], 0), utc_day(params[prefix + "Time"], 1)]
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT call_sid FROM calls WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            (*args, offset),
        ).fetchone()
    assert row is not None
    return str(row[0])


async def measure(args: argparse.Namespace, url: str, seeded: Seeded) -> None:
    settings = Settings(
        _env_file=None,
        database_url=url,
        secret_key=secrets.token_urlsafe(48),
        run_jobs_in_process=False,
        rate_limit_enabled=False,
        redis_url=None,
        twilio_account_sid=None,
        twilio_auth_token=None,
        smtp_host=None,
        log_level="WARNING",
    )
    app = create_app(settings)
    timed = Timed(app)
    cases = [
        Case("none", {}, True),
        Case("status=busy", {"status": "busy"}, True),
        Case(f"to={HOT_TO} (3% of calls)", {"to": HOT_TO}, True),
        Case("to=<a typical number>", {"to": seeded.typical_to}, False),
        Case("status=completed&to=<hot>", {"status": "completed", "to": HOT_TO}, True),
        Case("startTimeAfter=2026-05-01", {"startTimeAfter": "2026-05-01"}, True),
        Case("startTimeBefore=2025-06-01", {"startTimeBefore": "2025-06-01"}, True),
        Case("endTimeBefore=2025-06-01", {"endTimeBefore": "2025-06-01"}, True),
        Case("endTime=2025-06-01", {"endTime": "2025-06-01"}, False),
    ]
    rows: list[str] = []
    plans: list[tuple[str, list[str]]] = []
    async with app.router.lifespan_context(app):
        ctx: AppContext = app.state.ctx
        clock = SqlClock(ctx)
        transport = httpx.ASGITransport(app=timed)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench",
            headers={"x-api-key": seeded.api_key},
            timeout=60,
        ) as client:
            for case in cases:
                for size in args.page_sizes:
                    body: dict[str, Any] = {"projectId": seeded.project_id, "pageSize": size}
                    variants = [("first", body)]
                    if case.deep:
                        token = await walk_to(client, body, case.params, DEEP)
                        if token is not None:
                            variants.append(("deep", {**body, "pageToken": token}))
                    server: dict[str, list[float]] = {name: [] for name, _ in variants}
                    sql: dict[str, list[float]] = {name: [] for name, _ in variants}
                    for name, b in variants:  # a correctness check, and the plans
                        r = await client.post("/call/get-call-history", json=b, params=case.params)
                        r.raise_for_status()
                        got = r.json()["calls"]
                        assert got, case
                        if name == "deep":
                            want = offset_sid(url, seeded.project_id, case.params, DEEP)
                            assert got[0]["callSid"] == want, (case, got[0]["callSid"], want)
                        if size == max(args.page_sizes):
                            plans.append((f"{case.label}, pageSize {size}, {name} page",
                                          await explain(ctx, clock)))  # fmt: skip
                    gc.collect()
                    for i in range(args.warmup + args.repeat):
                        for name, b in variants:
                            r = await client.post(
                                "/call/get-call-history", json=b, params=case.params
                            )
                            if r.status_code != 200:
                                raise SystemExit(f"{case}: {r.status_code} {r.text}")
                            if i >= args.warmup:
                                server[name].append(timed.last)
                                sql[name].append(clock.last)
                    rows.append(row(case, size, server, sql))
                    print(rows[-1], flush=True)
    print()
    print("| filter | pageSize | first p50 | first p99 | deep p50 | deep p99 | deep/first p50 "
          "| SQL p50 first / deep |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    for title, plan in plans:
        print(f"\n-- EXPLAIN (ANALYZE, BUFFERS): {title}")
        print("\n".join(plan))


def row(case: Case, size: int, server: dict[str, list[float]], sql: dict[str, list[float]]) -> str:
    def ms(samples: list[float], p: float) -> str:
        return f"{percentile(samples, p) * 1000:.2f} ms"

    first, deep = server["first"], server.get("deep")
    ratio = f"{percentile(deep, 50) / percentile(first, 50):.2f}" if deep else "–"
    deep_cells = f"{ms(deep, 50)} | {ms(deep, 99)}" if deep else "– | –"
    sql_cells = ms(sql["first"], 50) + (" / " + ms(sql["deep"], 50) if deep else "")
    return (
        f"| {case.label} | {size} | {ms(first, 50)} | {ms(first, 99)} | {deep_cells} | {ratio} "
        f"| {sql_cells} |"
    )


async def explain(ctx: AppContext, clock: SqlClock) -> list[str]:
    async with ctx.engine.connect() as conn:
        result = await conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + clock.statement, clock.parameters
        )
        return [str(r[0]) for r in result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls in the project")
    parser.add_argument("--repeat", type=int, default=300, help="measured requests per case")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--database", default="talkstack_bench_history")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database, and reuse one kept earlier"
    )
    args = parser.parse_args()

    url = db_url(args.database)
    seeded = seeded_already(args.database) if args.keep else None
    if seeded is None:
        t0 = time.monotonic()
        seeded = seed(args.database, args.calls)
        print(f"seeded in {time.monotonic() - t0:.1f}s")
    else:
        print(f"reusing the seeded database {args.database}")
    try:
        asyncio.run(measure(args, url, seeded))
    finally:
        if not args.keep:
            drop_database(args.database)


if __name__ == "__main__":
    main()
