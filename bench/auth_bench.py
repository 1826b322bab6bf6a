"""How much authentication costs: GET /user/get-active-project with x-api-key and with a Bearer
token, against a bare FastAPI endpoint answering constant JSON (the ceiling), each served by
one uvicorn worker pinned to one core, SQLite in a temp dir.

    .venv/bin/python -m bench.auth_bench [--duration 10] [--connections 32]

The server runs on --server-cpu, the load generator on --client-cpus (2 cores: one each).
Results go to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.loadgen import Load, Result, run

ROOT = Path(__file__).resolve().parent.parent
CODE = re.compile(r"verification code is: (\d{6})")
# Both servers, the ceiling and the app, run with exactly these flags. The event loop and the
# HTTP parser are named rather than left to "auto", so that both always use uvloop and
# httptools (the project's dependencies), and a missing one fails loudly instead of quietly
# measuring something slower.
SERVER_FLAGS = [
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        # utime + stime of the whole process (every thread: aiosqlite's included).
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def serve(target: str, env: dict[str, str], cpu: int, log: Path) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", target]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *SERVER_FLAGS]
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
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{target} exited:\n{server.output()}")
            try:
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


def wait_for_code(server: Server, email: str) -> str:
    """With SMTP_HOST unset the app writes the email to its log: read the code there."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = server.output()
        at = log.rfind(f"To: {email}")
        match = CODE.search(log, at) if at >= 0 else None
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise SystemExit(f"no verification code for {email} in the server log:\n{server.output()}")


def prepare_user(server: Server) -> tuple[str, str]:
    """Signs up, verifies, creates a project, makes it active and mints an API key, as a user
    would; returns (access token, api key)."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/auth/signup", json={"email": email, "password": "bench-pass-1", "name": "B"})
        r.raise_for_status()
        code = wait_for_code(server, email)
        r = c.post("/auth/verify-email", json={"email": email, "code": code})
        r.raise_for_status()
        token = r.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        r = c.post("/project/create-project", json={"name": "Bench"}, headers=bearer)
        r.raise_for_status()
        project_id = r.json()["data"]["id"]
        r = c.post("/user/set-active-project", json={"projectId": project_id}, headers=bearer)
        r.raise_for_status()
        r = c.get("/user/generate-apikey", headers=bearer)
        r.raise_for_status()
        key = r.json()["apiKey"]
        for headers in (bearer, {"x-api-key": key}):
            r = c.get("/user/get-active-project", headers=headers)
            r.raise_for_status()
            assert r.json()["projectData"]["id"] == project_id
    return token, key


def measure(
    server: Server, path: str, headers: dict[str, str], args: argparse.Namespace
) -> Measured:
    load = Load(
        host="127.0.0.1",
        port=server.port,
        path=path,
        headers=headers,
        connections=args.connections,
        processes=args.processes,
        warmup=args.warmup,
        duration=args.duration,
        cpus=tuple(args.client_cpus),
    )
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    result = run(load)
    cpu = server.cpu_seconds() - cpu0
    return Measured(result, busy=cpu / (time.monotonic() - t0), cpu_per_request=cpu / result.total)


@dataclass(frozen=True)
class Measured:
    result: Result
    # Share of one core the server used over warm-up and measurement: near 100% means the
    # server, not the load generator, was the bottleneck.
    busy: float
    # Server CPU seconds per answered request: steadier than req/s on a shared machine.
    cpu_per_request: float


def report(name: str, m: Measured) -> None:
    r = m.result
    print(
        f"{name:<30} {r.rps:>7.0f} req/s  p50 {r.percentile(50) * 1000:6.2f} ms"
        f"  p99 {r.percentile(99) * 1000:6.2f} ms  errors {r.errors:<3}"
        f"  server cpu {m.busy:4.0%}, {m.cpu_per_request * 1e6:5.0f} us/request"
    )


def compare(name: str, m: Measured, ceiling: Measured) -> None:
    print(
        f"{name:<30} {m.result.rps / ceiling.result.rps:6.0%} of the ceiling's req/s,"
        f" {ceiling.cpu_per_request / m.cpu_per_request:4.0%} by CPU per request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpus", type=int, nargs="+", default=[1])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument(
        "--database-url", help="instead of SQLite in the temp dir, e.g. an empty PostgreSQL db"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="talkstack-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "TWILIO_"))}
    env.update(
        DATABASE_URL=args.database_url or f"sqlite:///{tmp}/bench.db",
        DATA_DIR=str(tmp / "data"),
        SECRET_KEY=secrets.token_urlsafe(48),
        RATE_LIMIT_ENABLED="false",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        database = env["DATABASE_URL"].split("://", 1)[0]
        print(
            f"{database}; one uvicorn worker (uvloop, httptools) on cpu {args.server_cpu}, "
            f"load generator on cpus {args.client_cpus}; {args.connections} connections, "
            f"{args.warmup:g}s warm-up + {args.duration:g}s measured"
        )
        with serve("bench.ceiling_app:create_app", env, args.server_cpu, tmp / "ceiling.log") as s:
            ceiling = measure(s, "/ceiling", {}, args)
        report("ceiling (constant JSON)", ceiling)

        with serve("app.main:create_app", env, args.server_cpu, tmp / "app.log") as s:
            token, key = prepare_user(s)
            path = "/user/get-active-project"
            by_key = measure(s, path, {"x-api-key": key}, args)
            report("get-active-project x-api-key", by_key)
            by_token = measure(s, path, {"Authorization": f"Bearer {token}"}, args)
            report("get-active-project Bearer", by_token)

        compare("x-api-key", by_key, ceiling)
        compare("Bearer", by_token, ceiling)
    finally:
        if args.keep:
            print(f"logs and database kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
