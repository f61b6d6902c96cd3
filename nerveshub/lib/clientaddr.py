"""The address a request really came from, for per-client limits.

Behind the TLS-terminating proxy every peer is the proxy: its address says
nothing about the client. The proxy appends the address it saw to
X-Forwarded-For (deploy/nginx/nerveshub.conf), and that header is believed only
when the peer is one of settings.TRUSTED_PROXIES, reading from the right and
skipping further trusted proxies: what a client wrote into the header itself is
on the left, and is never used.

IPv6 clients are grouped by their /64: one host commonly holds a whole /64, so
counting single addresses would let it spread its attempts over 2**64 of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from django.conf import settings
from django.http import HttpRequest


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPv4Address | IPv6Address, proxies: Iterable[IPv4Network | IPv6Network]) -> bool:
    return any(address in network for network in proxies)


def client_address(peer: str | None, forwarded_for: str | None = None) -> str | None:
    """A stable name for the client ("198.51.100.7", "2001:db8:1:2::/64"), or
    None when the peer is not an IP address (a unix socket)."""
    address = _parse(peer or "")
    if address is None:
        return None
    proxies = settings.TRUSTED_PROXIES
    if forwarded_for and _trusted(address, proxies):
        for hop in reversed(forwarded_for.split(",")):
            candidate = _parse(hop)
            if candidate is None:
                break  # garbage from the client's side of the header: keep the last good one
            address = candidate
            if not _trusted(candidate, proxies):
                break
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


def request_client_address(request: HttpRequest) -> str:
    """client_address for a Django request; "unknown" for a peer that is not an
    IP address, so such requests still share one count."""
    return client_address(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR")) or "unknown"
