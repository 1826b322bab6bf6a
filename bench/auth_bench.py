"""How much authentication costs: GET /user/get-active-project with x-api-key and with a Bearer
token, against a bare FastAPI endpoint answering constant JSON (the ceiling), each served by
one uvicorn worker pinned to one core, SQLite in a temp dir.

    .venv/bin/python -m bench.auth_bench [--duration 10] [--connections 32]

The server runs on --server-cpu, the load generator on --client-cpus (2 cores: one each).
Results go to stdout.
"""

from __future__ import annotations

import argparse
import re
import secrets
import time

import httpx

from bench.common import (
    Measured,
    Server,
    add_load_arguments,
    app_env,
    migrate,
    report,
    scratch,
    serve,
)
from bench.loadgen import Load, run

CODE = re.compile(r"verification code is: (\d{6})")
WIDTH = 30  # of the name column


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


def compare(name: str, m: Measured, ceiling: Measured) -> None:
    print(
        f"{name:<30} {m.result.rps / ceiling.result.rps:6.0%} of the ceiling's req/s,"
        f" {ceiling.cpu_per_request / m.cpu_per_request:4.0%} by CPU per request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument(
        "--database-url", help="instead of SQLite in the temp dir, e.g. an empty PostgreSQL db"
    )
    args = parser.parse_args()

    with scratch("talkstack-bench-", keep=args.keep, kept="logs and database") as tmp:
        env = app_env(args.database_url or f"sqlite:///{tmp}/bench.db", tmp)
        migrate(env)
        database = env["DATABASE_URL"].split("://", 1)[0]
        print(
            f"{database}; one uvicorn worker (uvloop, httptools) on cpu {args.server_cpu}, "
            f"load generator on cpus {args.client_cpus}; {args.connections} connections, "
            f"{args.warmup:g}s warm-up + {args.duration:g}s measured"
        )
        # Both servers, the ceiling and the app, run with exactly the same flags (SERVER_FLAGS).
        with serve("bench.ceiling_app:create_app", env, args.server_cpu, tmp / "ceiling.log") as s:
            ceiling = measure(s, "/ceiling", {}, args)
        report("ceiling (constant JSON)", ceiling, WIDTH)

        with serve("app.main:create_app", env, args.server_cpu, tmp / "app.log") as s:
            token, key = prepare_user(s)
            path = "/user/get-active-project"
            by_key = measure(s, path, {"x-api-key": key}, args)
            report("get-active-project x-api-key", by_key, WIDTH)
            by_token = measure(s, path, {"Authorization": f"Bearer {token}"}, args)
            report("get-active-project Bearer", by_token, WIDTH)

        compare("x-api-key", by_key, ceiling)
        compare("Bearer", by_token, ceiling)


if __name__ == "__main__":
    main()
