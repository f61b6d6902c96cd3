"""The address a request came from, believing X-Forwarded-For only from the
proxies in TRUSTED_PROXIES (the same setting that lets the device socket
believe nginx's client certificate header)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from django.conf import settings
from django.http import HttpRequest


def _parse(value: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ip_address(value.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPv4Address | IPv6Address | None) -> bool:
    return address is not None and any(address in network for network in settings.TRUSTED_PROXIES)


def client_address(remote: str | None, forwarded_for: str | None) -> str:
    """The peer's address; when the peer is a trusted proxy, the right-most
    X-Forwarded-For entry that is not one (entries to its left were written by
    the client and prove nothing)."""
    peer = _parse(remote or "")
    if peer is None:
        return remote or "unknown"
    if not _trusted(peer) or not forwarded_for:
        return str(peer)
    for item in reversed(forwarded_for.split(",")):
        hop = _parse(item)
        if hop is None:
            # Garbage in the chain: the last address we can believe is the proxy's.
            break
        if not _trusted(hop):
            return str(hop)
        peer = hop
    return str(peer)


def request_client_address(request: HttpRequest) -> str:
    return client_address(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR"))
