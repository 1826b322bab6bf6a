"""An HTTP client that cannot be pointed into the server's own network (SSRF guard).

The check sits where the socket is opened: the host is resolved once, every address must be
public, and the connection goes to the address that was checked. A DNS answer that changes
between the check and the connect (rebinding) has nothing to slip through, while TLS (SNI,
certificate) and the Host header still use the URL's name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import anyio
import httpcore
import httpx

from app.errors import AppError
from app.integrations.webhooks.url import resolve

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(httpcore.ConnectError):
    """The host resolves to a private or reserved address; nothing was sent."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        if not self._allow_private:
            refused = [a for a in addresses if not a.is_global]
            if refused:
                raise BlockedAddress(
                    f"refused: the host resolves to a private or reserved address ({refused[0]})"
                )
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("refused: unix sockets are not reachable from webhooks")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    @staticmethod
    async def _resolve(host: str, port: int, seconds: float | None) -> list[Address]:
        try:
            with anyio.fail_after(seconds):
                return await resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("resolving the host timed out") from exc
        except AppError as exc:
            raise httpcore.ConnectError("the host could not be resolved") from exc


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, *, allow_private: bool, limits: httpx.Limits) -> None:
        ssl_context = httpx.create_ssl_context()
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # httpx has no network_backend option, so the pool it built is replaced by one that
        # connects only through the guard. This reaches into httpx 0.28.1 (pinned);
        # tests/test_webhooks.py proves the guard is the one in use.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow_private=allow_private),
        )


def guarded_client(*, allow_private: bool, timeout: float) -> httpx.AsyncClient:
    """A client for URLs chosen by users: no proxies from the environment, no redirects."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
    return httpx.AsyncClient(
        transport=GuardedTransport(allow_private=allow_private, limits=limits),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
    )


def blocked_reason(exc: BaseException) -> str | None:
    """The guard's refusal behind an httpx error, if that is what it was."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, BlockedAddress):
            return str(cause)
        cause = cause.__cause__
    return None
