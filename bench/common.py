"""What the benches share: the app's environment and migrations, a uvicorn server pinned to one
core, the CPU it and each core used, throwaway PostgreSQL databases, and the numbers."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench.loadgen import Result

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
# What `serve` runs uvicorn with unless told otherwise: one worker, no access log. The event
# loop and the HTTP parser are named rather than left to "auto", so that a server always uses
# uvloop and httptools (the project's dependencies), and a missing one fails loudly instead of
# quietly measuring something slower.
SERVER_FLAGS = (
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
)


# -- the command line and the scratch directory ------------------------------------------------


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a bench that drives one server core from a closed-loop load generator."""
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpus", type=int, nargs="+", default=[1])


@contextmanager
def scratch(prefix: str, *, keep: bool, kept: str) -> Iterator[Path]:
    """A temp dir for the logs and the database: removed at the end, or with `keep` left in
    place and named on stdout after `kept` ("logs and database")."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            print(f"{kept} kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# -- the app's environment and database ---------------------------------------------------------


def app_env(
    database_url: str, tmp: Path, *, drop: tuple[str, ...] = ("SMTP_", "TWILIO_"), **settings: str
) -> dict[str, str]:
    """This process's environment less the variables starting with `drop`, for a fresh app:
    `database_url`, a data dir in `tmp`, a random secret, no rate limit, warnings only, then
    `settings` (NAME=value)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        DATABASE_URL=database_url,
        DATA_DIR=str(tmp / "data"),
        SECRET_KEY=secrets.token_urlsafe(48),
        RATE_LIMIT_ENABLED="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    env.update(settings)
    return env


def migrate(env: dict[str, str]) -> None:
    """`alembic upgrade head` on env's DATABASE_URL, as the deployed app is migrated."""
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def db_url(name: str) -> str:
    """The URL of the database `name` on ADMIN_URL's server."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def create_database(name: str) -> str:
    """An empty PostgreSQL database `name` (dropped first if it is there); returns its URL."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return db_url(name)


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sync_url(url: str) -> str:
    """The app's database URL for a synchronous SQLAlchemy engine (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


# -- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread: aiosqlite's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_seconds(cpu: int) -> float:
    """Busy seconds of one core, every process included (/proc/stat): the machine is shared."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(v) for v in line.split()[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


@contextmanager
def serve(
    target: str,
    env: dict[str, str],
    cpu: int,
    log: Path,
    *,
    flags: Sequence[str] = SERVER_FLAGS,
    start_timeout: float = 30.0,
) -> Iterator[Server]:
    """uvicorn serving the app factory `target` with `flags`, pinned to `cpu`, its output in
    `log`; yields once it answers, and stops its whole process group on the way out."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", target]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *cmd],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{target} exited:\n{server.output()}")
            try:
                # Any answer will do: uvicorn listens only once the app's lifespan has started.
                httpx.get(f"{server.url}/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{target} did not start:\n{server.output()}") from None
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the numbers --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass(frozen=True)
class Measured:
    result: Result
    # Share of one core the server used over warm-up and measurement: near 100% means the
    # server, not the load generator, was the bottleneck.
    busy: float
    # Server CPU seconds per answered request: steadier than req/s on a shared machine.
    cpu_per_request: float


def report(name: str, m: Measured, width: int) -> None:
    r = m.result
    print(
        f"{name:<{width}} {r.rps:>7.0f} req/s  p50 {r.percentile(50) * 1000:6.2f} ms"
        f"  p99 {r.percentile(99) * 1000:6.2f} ms  errors {r.errors:<3}"
        f"  server cpu {m.busy:4.0%}, {m.cpu_per_request * 1e6:5.0f} us/request",
        flush=True,
    )
