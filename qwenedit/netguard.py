"""Which URLs named by someone else (a manifest, a request body) may be fetched: public addresses only.

``refusal(url)`` resolves the URL's host and returns why it must not be fetched, or None when every
address it resolves to is public. Refused: non-HTTP(S) schemes, a missing host, and any address that
is loopback, private, link-local, multicast, reserved, unspecified, shared (carrier-grade NAT) or a
cloud metadata service, IPv4-mapped IPv6 included. The real API fetches only public addresses, so a
refusal is also the correct validation answer; ``allow_private=True`` (``--allow-private-urls``) lets
a test or an on-premises setup fetch local servers. ``arefusal`` is the same for async callers.

The reason names the host, the address and its kind, never anything the network answered beyond the
name lookup. Callers must also not follow redirects (or must check every hop with ``refusal``).
``pinned(url)`` gives the address checked, so a caller can connect to it and not resolve again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_HINT = "pass --allow-private-urls to fetch it anyway"
# Cloud instance metadata services (AWS/GCP/Azure/OpenStack, Alibaba Cloud, AWS over IPv6).
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "169.254.170.2")
)


def address_kind(address: Address) -> str | None:
    """What makes ``address`` non-public ("loopback", "private", ...), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA:
        return "cloud metadata"
    for kind, test in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if test:
            return kind
    if not address.is_global:
        return "non-public (shared or special-purpose)"
    return None


def _target(url: str) -> tuple[str, int] | str:
    """``(host, port)`` of an http(s) URL, or why it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return f"uses {parts.scheme or 'no'} scheme; only http and https URLs are fetched"
    if not parts.hostname:
        return "has no host"
    return parts.hostname, port or (443 if parts.scheme.lower() == "https" else 80)


def _judge(host: str, infos: list[tuple[object, ...]]) -> tuple[str | None, Address | None]:
    first: Address | None = None
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        kind = address_kind(address)
        if kind is not None:
            shown = host if host == str(address) else f"{host} ({address})"
            article = "an" if kind[0] in "aeiou" else "a"
            return (
                f"points at {shown}, {article} {kind} address, which the API cannot reach; {ALLOW_HINT}",
                None,
            )
        first = first or address
    if first is None:
        return f"names host {host}, which does not resolve", None
    return None, first


def pinned(url: str, *, allow_private: bool = False) -> tuple[str | None, Address | None]:
    """``(reason, None)`` if ``url`` must not be fetched, else ``(None, the address checked)`` (``(None,
    None)`` with ``allow_private``: nothing checked beyond the scheme, fetch as usual)."""
    target = _target(url)
    if isinstance(target, str):
        return f"URL {target}", None
    if allow_private:
        return None, None
    host, port = target
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"names host {host}, which does not resolve", None
    return _judge(host, list(infos))


def refusal(url: str, *, allow_private: bool = False) -> str | None:
    """Why ``url`` must not be fetched (a sentence fragment: "points at ..."), or None."""
    return pinned(url, allow_private=allow_private)[0]


async def arefusal(url: str, *, allow_private: bool = False) -> str | None:
    """``refusal`` for async code: the name lookup runs on the loop's resolver."""
    target = _target(url)
    if isinstance(target, str):
        return f"URL {target}"
    if allow_private:
        return None
    host, port = target
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"names host {host}, which does not resolve"
    return _judge(host, list(infos))[0]
