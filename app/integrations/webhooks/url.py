"""Where project webhooks may point: http(s) only, and never into the server's own network."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import anyio

from app.errors import BadRequest

MAX_URL_LENGTH = 2048


def _refuse(reason: str) -> BadRequest:
    return BadRequest(f"webhookURL {reason}", code="INVALID_WEBHOOK_URL")


async def validate_webhook_url(url: str, *, allow_private: bool) -> str:
    """Return the URL if a webhook may be sent there; 400 otherwise.

    Every address the host resolves to must be public (SSRF: loopback, private, link-local,
    cloud metadata and other special ranges are refused) unless WEBHOOK_ALLOW_PRIVATE_HOSTS.
    The check is repeated at delivery time, so DNS changes after saving do not bypass it.
    """
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"must be at most {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse("is not a valid URL.") from exc
    if parts.scheme not in ("http", "https"):
        raise _refuse("must start with http:// or https://.")
    host = parts.hostname
    if not host:
        raise _refuse("has no host.")
    if parts.username is not None or parts.password is not None:
        raise _refuse("must not contain credentials.")
    if allow_private:
        return url
    for address in await resolve(host, port or (443 if parts.scheme == "https" else 80)):
        if not address.is_global:
            raise _refuse(
                f"points at a private or reserved address ({address}); set "
                "WEBHOOK_ALLOW_PRIVATE_HOSTS=true to allow that on a private network."
            )
    return url


async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return [_unmap(literal)]
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _refuse(f"host {host!r} could not be resolved.") from exc
    addresses = {_unmap(ipaddress.ip_address(info[4][0])) for info in infos}
    if not addresses:
        raise _refuse(f"host {host!r} could not be resolved.")
    return sorted(addresses, key=str)


def _unmap(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # ::ffff:127.0.0.1 is 127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
