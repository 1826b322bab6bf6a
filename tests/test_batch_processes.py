"""Batches across real processes: a server killed mid-batch (kill -9) and restarted dials every row
exactly once; two servers and two workers on PostgreSQL and Redis share one dialing pace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.models import Batch, BatchRow
from tests.conftest import TEST_SECRET, free_port
from tests.factories import CallingAgent, calling_agent

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
        **extra,
    )
    return env


def start_server(procs: list[Proc], env: dict[str, str], tmp_path: Path, name: str) -> str:
    port = free_port()
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


@pytest.mark.slow
async def test_a_server_killed_mid_batch_is_restarted_and_dials_each_row_once(
    app, client, mailbox, twilio_standin, settings, procs, tmp_path
):
    setup = await account(client, mailbox, twilio_standin)
    targets = targets_for(30)
    r = await client.post(
        "/call/batch-call",
        data={"projectId": setup.project, "agentId": setup.agent},
        files={"file": ("leads.csv", csv_for(targets), "text/csv")},
        headers=setup.key,
    )
    assert r.status_code == 200 and r.json()["batch"]["accepted"] == 30
    env = process_env(settings, tmp_path, BATCH_CALLS_PER_SECOND="10")
    start_server(procs, env, tmp_path, "server-1")

    # Let it dial a third, then make Twilio slow to answer the next create (it still places the
    # call, after the server is gone), and kill the server while that dial is in flight.
    deadline = time.monotonic() + 30
    while len(twilio_standin.call_sids) < 10:
        assert time.monotonic() < deadline, procs[0].output()
        await asyncio.sleep(0.02)
    asked = len(twilio_standin.requests_to("/Calls.json", "POST"))
    twilio_standin.hang_next(1, seconds=1.5)
    while len(twilio_standin.requests_to("/Calls.json", "POST")) <= asked:
        assert time.monotonic() < deadline, procs[0].output()
        await asyncio.sleep(0.005)
    procs[0].kill()
    async with app.state.ctx.sessionmaker() as s:
        states = Counter((await s.scalars(select(BatchRow.state))).all())
    assert states["dialing"] >= 1 and states["queued"] > 0, states

    start_server(procs, env, tmp_path, "server-2")
    await wait_batches_done(app, within=60)

    await assert_each_row_dialed_once(app, twilio_standin, targets)
    assert "adopted" in procs[1].output()  # the in-flight dial was found at Twilio, not redone


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
