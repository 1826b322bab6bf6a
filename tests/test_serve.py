"""The README's first command, `scripts/serve`, brings up a working server from the checkout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

# Bootstrap may have to install uv and sync dependencies before the server starts.
STARTUP_TIMEOUT = 90.0
SHUTDOWN_TIMEOUT = 20.0


def _dotenv_sets(name: str) -> bool:
    dotenv = ROOT / ".env"
    if not dotenv.exists():
        return False
    return any(line.strip().startswith(f"{name}=") for line in dotenv.read_text().splitlines())


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"scripts/serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"no answer on /health after {STARTUP_TIMEOUT:.0f}s:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, as a process manager would; the whole group if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECRET_KEY", "SMTP_", "TWILIO_", "DATABASE_URL", "DATA_DIR"))
    }
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
        DATA_DIR=str(tmp_path / "data"),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        # Its own session: on failure the whole group (the script, uv, uvicorn) is killed.
        proc = subprocess.Popen(  # noqa: S603 (our own script, fixed path)
            [str(ROOT / "scripts" / "serve")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    srv = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        yield srv
    finally:
        srv.kill()


@pytest.mark.slow
def test_scripts_serve_starts_a_working_server(server: Server, tmp_path: Path):
    server.wait_healthy()

    assert httpx.get(f"{server.base_url}/health").json() == {"message": "ok", "status": "success"}
    r = httpx.get(f"{server.base_url}/ready")
    assert r.status_code == 200, r.text
    r = httpx.get(f"{server.base_url}/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text
    r = httpx.get(f"{server.base_url}/openapi.json")
    assert r.status_code == 200 and "/auth/login" in r.json()["paths"]

    # The migrations ran against the given database, and the generated key went to DATA_DIR.
    assert (tmp_path / "x.db").exists()
    assert (tmp_path / "data" / "secret_key").exists()
    if not _dotenv_sets("SECRET_KEY"):
        assert "SECRET_KEY is not set" in server.output()

    # A clean stop: the lifespan ran to its end. uvicorn then re-raises the signal it got, so
    # the exit status is "terminated by SIGTERM" (0 with older versions).
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "Application shutdown complete" in server.output()
