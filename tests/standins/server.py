"""A real HTTP server for a stand-in: uvicorn on 127.0.0.1, a free port, a background thread;
and the start/stop and reset that every stand-in's fixtures share."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import uvicorn


class _Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class _Resettable(Protocol):
    def reset(self) -> None: ...


S = TypeVar("S", bound=_Startable)
R = TypeVar("R", bound=_Resettable)


@contextmanager
def running(server: S) -> Iterator[S]:
    """`server` started, and stopped again however the block ends."""
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def reset_around(standin: R) -> Iterator[R]:
    """A session's stand-in for one test: reset before it and after it, so nothing a test
    leaves behind (numbers, scripted answers, faults, hanging requests) reaches the next."""
    standin.reset()
    try:
        yield standin
    finally:
        standin.reset()


def listening_socket() -> socket.socket:
    """A socket on a free port of 127.0.0.1, bound before uvicorn starts: the port is known at
    once and cannot be taken in between."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def quiet_config(app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn for a test: HTTP/1.1 by h11, warnings only, no access log, and no lifespan (a
    stand-in has none; the app's is run by the test's `app` fixture)."""
    return uvicorn.Config(
        app,
        lifespan="off",
        http="h11",
        log_config=None,
        log_level="warning",
        access_log=False,
        **options,
    )


class LocalServer:
    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._socket = sock = listening_socket()
        self.port = int(sock.getsockname()[1])
        config = quiet_config(self.app, ws="none", loop="asyncio", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
