"""Batches across real processes: a server killed (kill -9) at every point of the dial path, over
and over, dials every row exactly once; two servers and two workers on PostgreSQL and Redis share
one dialing pace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.models import Batch, BatchRow, Call
from tests.conftest import TEST_SECRET, free_port
from tests.factories import CallingAgent, calling_agent
from tests.standins.twilio_live import LiveCalls

FROM = "+14155550100"
BIN = Path(sys.executable).parent


class Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 (our own console scripts)
                args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown, no cleanup, leases left held."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def process_env(settings: Any, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECRET_KEY", "SMTP_", "TWILIO_", "DATABASE_URL", "DATA_DIR", "REDIS"))
    }
    env.update(
        DATABASE_URL=settings.database_url,
        SECRET_KEY=TEST_SECRET,
        DATA_DIR=str(tmp_path / "data"),
        PUBLIC_BASE_URL=settings.public_base_url,
        TWILIO_ACCOUNT_SID=settings.twilio_account_sid,
        TWILIO_AUTH_TOKEN=settings.twilio_auth_token,
        TWILIO_API_BASE_URL=settings.twilio_api_base_url,
        TWILIO_TIMEOUT_SECONDS="1",
        JOB_POLL_INTERVAL_SECONDS="0.1",
        JOB_LEASE_SECONDS="2",
        BATCH_SLICE_SECONDS="2",
        BATCH_MAX_CONCURRENT_CALLS="1000",
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def start_server(
    procs: list[Proc], env: dict[str, str], tmp_path: Path, name: str, port: int | None = None
) -> str:
    port = port or free_port()
    args = [
        str(BIN / "uvicorn"), "--factory", "app.main:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--ws", "websockets-sansio", "--no-access-log",
    ]  # fmt: skip
    procs.append(Proc(name, args, env, tmp_path / f"{name}.log"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return base
        if time.monotonic() > deadline or procs[-1].proc.poll() is not None:
            raise AssertionError(procs[-1].output())
        time.sleep(0.1)


def start_worker(procs: list[Proc], env: dict[str, str], tmp_path: Path, name: str) -> Proc:
    proc = Proc(name, [str(BIN / "talkstack-worker")], env, tmp_path / f"{name}.log")
    procs.append(proc)
    return proc


async def account(client, mailbox, twilio_standin) -> CallingAgent:
    agent = {"name": "Ann", "systemInstruction": "Call {{name}}."}
    return await calling_agent(
        client, mailbox, twilio_standin, number=FROM, agent=agent, project_name="Leads"
    )


def csv_for(targets: list[str]) -> bytes:
    return ("number,name\n" + "".join(f"{n},N{i}\n" for i, n in enumerate(targets))).encode()


def targets_for(n: int, start: int = 1000) -> list[str]:
    return [f"+1415555{start + i:04d}" for i in range(n)]


async def wait_batches_done(app, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        async with app.state.ctx.sessionmaker() as s:
            running = await s.scalar(
                select(func.count()).select_from(Batch).where(Batch.status == "running")
            )
        if running == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError("batches still running")
        await asyncio.sleep(0.2)


def placed(twilio_standin) -> Counter[str]:
    return Counter(twilio_standin.call(sid)["to"] for sid in twilio_standin.call_sids)


async def assert_each_row_dialed_once(app, twilio_standin, targets: list[str]) -> None:
    assert placed(twilio_standin) == Counter(targets)
    async with app.state.ctx.sessionmaker() as s:
        rows = list(await s.scalars(select(BatchRow)))
    assert {r.state for r in rows} == {"dialed"}
    assert sorted(r.call_sid or "" for r in rows) == sorted(twilio_standin.call_sids)


@pytest.fixture
def settings_overrides(twilio_standin) -> dict[str, Any]:
    # The test's own app only sets up and uploads: the processes under test dial.
    return {**twilio_standin.settings_overrides(), "run_jobs_in_process": False}


# The create-hook stage each kill point is at ("answered" is one; "claimed" is none).
HOOK_STAGE = {"lost": "received", "received": "received", "initiated": "created"}


class Killer:
    """Kills the server of the moment with SIGKILL at one armed point of the dial path.

    Points: "claimed" (a random moment once dialing runs: a row is always claimed and waiting
    for its pace slot, so this also lands between the claim and the request), "lost" (the
    create request never reaches Twilio), "received" (Twilio got the request and places the
    call after the server died), "initiated" (Twilio's `initiated` callback reached the server,
    the create answer did not), "answered" (right after Twilio answered, racing the SID commit).
    Installed as the Twilio stand-in's create hook, in front of its live callbacks."""

    def __init__(self, live: LiveCalls) -> None:
        self.live = live
        self.proc: Proc | None = None
        self.point = ""
        self.nth = 0
        self.creates = 0
        self.killed = threading.Event()
        self.hits: list[str] = []

    def arm(self, proc: Proc, point: str, nth: int) -> None:
        self.proc, self.point, self.nth, self.creates = proc, point, nth, 0
        self.killed.clear()

    def kill(self) -> None:
        if self.proc is not None and not self.killed.is_set():
            self.proc.kill()
            self.hits.append(self.point)
            self.killed.set()

    async def on_create(self, stage: str, sid: str | None) -> bool | None:
        if stage == "received":
            self.creates += 1
        mine = not self.killed.is_set() and self.creates == self.nth
        if stage == "created":
            await self.live.on_create(stage, sid)  # `initiated` is delivered first
        if mine and HOOK_STAGE.get(self.point, self.point) == stage:
            self.kill()
            if self.point == "lost":
                return False
        return None


async def wait_for(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


KILL_POINTS = ("claimed", "lost", "received", "initiated", "answered")


@pytest.mark.slow
async def test_a_server_killed_at_every_point_of_the_dial_path_dials_each_row_exactly_once(
    app, client, mailbox, twilio_standin, settings, procs, tmp_path
):
    setup = await account(client, mailbox, twilio_standin)
    # Rows to spare: on a loaded machine a life may dial many before its kill lands, and every
    # one of the 20 lives needs rows left to dial. The last server dials the rest fast.
    targets = targets_for(240)
    r = await client.post(
        "/call/batch-call",
        data={"projectId": setup.project, "agentId": setup.agent},
        files={"file": ("leads.csv", csv_for(targets), "text/csv")},
        headers=setup.key,
    )
    assert r.status_code == 200 and r.json()["batch"]["accepted"] == len(targets)
    # One port for every restart: Twilio keeps calling the URLs the first server gave it.
    port = free_port()
    env = process_env(
        settings,
        tmp_path,
        BATCH_CALLS_PER_SECOND="10",
        JOB_LEASE_SECONDS="1",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
    )
    live = LiveCalls(twilio_standin)
    killer = Killer(live)
    twilio_standin.create_hook = killer.on_create
    seed = int(os.environ.get("CRASH_SEED", time.time()))
    rng = random.Random(seed)
    kills = 20
    try:
        for i in range(kills):
            point = KILL_POINTS[i % len(KILL_POINTS)]
            await asyncio.to_thread(start_server, procs, env, tmp_path, f"server-{i}", port)
            killer.arm(procs[-1], point, nth=rng.randint(1, 3))
            if point == "claimed":
                await wait_for(lambda: killer.creates >= 1, 30, procs[-1].output())
                await asyncio.sleep(rng.uniform(0, 0.25))
                killer.kill()
            await wait_for(killer.killed.is_set, 30, f"seed {seed}: " + procs[-1].output())
        assert sorted(killer.hits) == sorted(KILL_POINTS * (kills // len(KILL_POINTS)))
        fast = {**env, "BATCH_CALLS_PER_SECOND": "100"}
        await asyncio.to_thread(start_server, procs, fast, tmp_path, "server-last", port)
        await wait_batches_done(app, within=90)
        await asyncio.sleep(live.talk_seconds + 3 * live.step_seconds + 0.5)  # last callbacks
    finally:
        live.stop()

    logs = "\n".join(p.output() for p in procs)
    assert placed(twilio_standin) == Counter(targets), f"seed {seed}: a row dialed twice or never"
    await assert_each_row_dialed_once(app, twilio_standin, targets)
    async with app.state.ctx.sessionmaker() as s:
        rows = list(await s.scalars(select(BatchRow)))
        calls = {c.id: c for c in await s.scalars(select(Call))}
    # Each row's call is the one Twilio placed for it, and every callback Twilio delivered
    # landed on that call.
    assert all(calls[r.call_id].call_sid == r.call_sid for r in rows if r.call_id)
    assert "unknown call" not in logs, f"seed {seed}"
    delivered = {d.sid for d in live.deliveries if d.answer is not None}
    assert all(d.answer == 204 for d in live.deliveries if d.answer is not None)
    assert delivered <= {c.call_sid for c in calls.values()}
    completed = {d.sid for d in live.deliveries if d.status == "completed" and d.answer == 204}
    assert completed and all(
        c.status == "completed" for c in calls.values() if c.call_sid in completed
    )


@pytest.mark.slow
async def test_two_servers_and_two_workers_share_one_pace_on_postgres_and_redis(
    app, client, mailbox, twilio_standin, settings, procs, tmp_path, database_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("several hosts share PostgreSQL; SQLite is one machine's database")
    setup = await account(client, mailbox, twilio_standin)
    rate = 40.0
    env = process_env(
        settings,
        tmp_path,
        RUN_JOBS_IN_PROCESS="false",
        BATCH_CALLS_PER_SECOND=str(rate),
        REDIS_URL=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    )
    servers = [start_server(procs, env, tmp_path, f"server-{i}") for i in (1, 2)]
    # Two batches of one project, uploaded to different servers: two dialing chains that the
    # two workers run at the same time, under one pace.
    halves = [targets_for(250), targets_for(250, start=5000)]
    batch_ids = []
    async with httpx.AsyncClient(timeout=30) as http:
        for base, targets in zip(servers, halves, strict=True):
            r = await http.post(
                f"{base}/call/batch-call",
                data={"projectId": setup.project, "agentId": setup.agent},
                files={"file": ("leads.csv", csv_for(targets), "text/csv")},
                headers=setup.key,
            )
            assert r.status_code == 200, r.text
            batch_ids.append(r.json()["batch"]["id"])
        workers = [start_worker(procs, env, tmp_path, f"worker-{i}") for i in (1, 2)]
        await wait_batches_done(app, within=90)
        r = await http.get(f"{servers[1]}/call/batch-call/{batch_ids[0]}", headers=setup.key)
        assert r.json()["batch"]["counts"]["dialed"] == 250

    await assert_each_row_dialed_once(app, twilio_standin, halves[0] + halves[1])
    for w in workers:
        assert "job worker started" in w.output() and "Traceback" not in w.output()
    async with app.state.ctx.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(BatchRow)) == 500
    # The pace held across processes: the whole took at least (n - 1) / rate, and no
    # one-second window saw more than `rate` creates plus what scheduling jitter on a loaded
    # machine can bunch (a dial started a few ms late next to one on time): 10%.
    times = sorted(r.at for r in twilio_standin.requests_to("/Calls.json", "POST"))
    assert len(times) == 500
    assert times[-1] - times[0] >= (500 - 1) / rate * 0.95
    j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        assert i - j + 1 <= rate * 1.1 + 1, f"{i - j + 1} creates within one second"
