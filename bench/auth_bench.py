"""How much authentication costs: GET /user/get-active-project with x-api-key and with a Bearer
token, against a bare FastAPI endpoint answering constant JSON (the ceiling), each served by
one uvicorn worker pinned to one core, SQLite in a temp dir.

    .venv/bin/python -m bench.auth_bench [--rounds 3] [--duration 5] [--connections 32]

The server runs on --server-cpu, the load generator on --client-cpus (2 cores: one each).
Results go to stdout.
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
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
WIDTH = 33  # of the name column


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.set_defaults(duration=5.0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="ceiling, x-api-key, Bearer measured in turn"
    )
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
            f"{args.rounds} rounds of {args.warmup:g}s warm-up + {args.duration:g}s measured"
        )
        # Both servers, the ceiling and the app, run with exactly the same flags (SERVER_FLAGS),
        # side by side on the same core, measured in turn: a machine that gets faster or slower
        # over the run (other tenants, clock scaling) moves all three alike, and each ratio
        # compares measurements taken within seconds of each other.
        with (
            serve("bench.ceiling_app:create_app", env, args.server_cpu, tmp / "ceiling.log") as c,
            serve("app.main:create_app", env, args.server_cpu, tmp / "app.log") as s,
        ):
            token, key = prepare_user(s)
            path = "/user/get-active-project"
            subjects = {
                "ceiling (constant JSON)": (c, "/ceiling", {}),
                "get-active-project x-api-key": (s, path, {"x-api-key": key}),
                "get-active-project Bearer": (s, path, {"Authorization": f"Bearer {token}"}),
            }
            runs: dict[str, list[Measured]] = {name: [] for name in subjects}
            for round_no in range(1, args.rounds + 1):
                for name, (server, url_path, headers) in subjects.items():
                    runs[name].append(measure(server, url_path, headers, args))
                    report(f"{round_no}: {name}", runs[name][-1], WIDTH)

        ceiling, *authenticated = runs
        print(f"median of {args.rounds} rounds, each ratio taken within its round:")
        for name in authenticated:
            pairs = list(zip(runs[name], runs[ceiling], strict=True))
            by_rps = [m.result.rps / c.result.rps for m, c in pairs]
            by_cpu = [c.cpu_per_request / m.cpu_per_request for m, c in pairs]
            print(
                f"{name.removeprefix('get-active-project '):<{WIDTH}}"
                f" {statistics.median(by_rps):6.0%} of the ceiling's req/s"
                f" ({min(by_rps):.0%}-{max(by_rps):.0%}),"
                f" {statistics.median(by_cpu):4.0%} by CPU per request"
            )


if __name__ == "__main__":
    main()
