"""Batch calls: accepting a 100,000-row CSV, and the dialing pace.

    .venv/bin/python -m bench.batch_bench [--rows 100000] [--rate 10] [--pace-seconds 60]

One uvicorn worker (jobs in process) pinned to --server-cpu, on a fresh SQLite database (or
--database-url), against the Twilio stand-in of the tests (tests/standins/twilio.py, a real HTTP
server in this process) on the other core. It signs up a user through the API, gives an agent a
number, then:

1. uploads a CSV of --rows valid rows (each with a variable) and reports the request's wall
   time and the server process's peak resident memory (VmHWM, the whole life of the process);
2. lets the batch dial at --rate calls per second and counts the creates Twilio received over
   --pace-seconds: the achieved rate against the configured one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx

from bench.auth_bench import prepare_user
from bench.common import app_env, migrate, scratch, serve
from tests.standins.server import running
from tests.standins.twilio import TwilioStandin

FROM = "+14155550100"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def csv_rows(n: int) -> bytes:
    lines = ["number,name,company"]
    lines += [
        f"+1415{200 + i // 10000:03d}{i % 10000:04d},Lead {i},Acme {i % 97}" for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=10.0, help="BATCH_CALLS_PER_SECOND")
    parser.add_argument("--pace-seconds", type=float, default=60.0)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--database-url")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    kept = "logs and database"
    with (
        running(TwilioStandin()) as twilio,
        scratch("talkstack-batch-bench-", keep=args.keep, kept=kept) as tmp,
    ):
        twilio.add_incoming_number(FROM)
        env = app_env(
            args.database_url or f"sqlite:///{tmp}/bench.db",
            tmp,
            TWILIO_ACCOUNT_SID=twilio.account_sid,
            TWILIO_AUTH_TOKEN=twilio.auth_token,
            TWILIO_API_BASE_URL=twilio.base_url,
            BATCH_CALLS_PER_SECOND=str(args.rate),
            BATCH_MAX_CONCURRENT_CALLS="100000",
        )
        migrate(env)
        with serve("app.main:create_app", env, args.server_cpu, tmp / "server.log") as server:
            _, key = prepare_user(server)
            headers = {"x-api-key": key}
            with httpx.Client(base_url=server.url, timeout=120, headers=headers) as c:
                project = c.get("/user/get-active-project").json()["projectData"]["id"]
                r = c.post(
                    "/agent/create-agent",
                    json={"name": "Bench", "projectId": project, "phoneNumber": FROM,
                          "systemInstruction": "Call {{name}} at {{company}}."},
                )  # fmt: skip
                r.raise_for_status()
                agent = r.json()["data"]["id"]
                content = csv_rows(args.rows)
                before = peak_rss_mib(server.proc.pid)
                started = time.perf_counter()
                r = c.post(
                    "/call/batch-call",
                    data={"projectId": project, "agentId": agent},
                    files={"file": ("leads.csv", content, "text/csv")},
                )
                elapsed = time.perf_counter() - started
                r.raise_for_status()
                batch = r.json()["batch"]
                peak = peak_rss_mib(server.proc.pid)
                print(
                    f"upload: {args.rows:,} rows, {len(content) / 1e6:.1f} MB: {elapsed:.2f} s, "
                    f"accepted {batch['accepted']:,}, rejected {batch['rejectedCount']}; "
                    f"server peak RSS {peak:.0f} MiB (before the upload {before:.0f} MiB)"
                )
                # The pace: count creates over a window that starts after the first one.
                while not twilio.requests_to("/Calls.json", "POST"):
                    time.sleep(0.01)
                t0 = time.monotonic()
                time.sleep(args.pace_seconds)
                creates = [q.at for q in twilio.requests_to("/Calls.json", "POST") if q.at >= t0]
                window = time.monotonic() - t0
                achieved = len(creates) / window
                print(
                    f"pace: {len(creates)} calls in {window:.1f} s = {achieved:.2f}/s against "
                    f"{args.rate:g}/s configured ({achieved / args.rate - 1:+.1%})"
                )
                c.post(f"/call/batch-call/{batch['id']}/cancel")


if __name__ == "__main__":
    main()
