"""Where the hub may send a webhook: the address check and a connection pinned
to the address that passed it.

An endpoint's address is chosen by an org admin, and the hub POSTs from inside
the operator's network: without a check, an endpoint such as
http://127.0.0.1:6379/ or http://169.254.169.254/ makes the hub a probe of
that network. So every delivery resolves the host once, refuses loopback,
private, link-local, multicast, reserved and unspecified addresses (IPv4, IPv6
and IPv4 carried inside IPv6) unless WEBHOOK_ALLOWED_NETWORKS names them, and
connects to the address it checked: a second lookup by the HTTP client could
answer differently (DNS rebinding). docs/webhooks.md, "Addresses".
"""

from __future__ import annotations

import http.client
import socket
import ssl
from functools import cache
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

from django.conf import settings

# NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 destination.
_NAT64 = IPv6Network("64:ff9b::/96")

Address = IPv4Address | IPv6Address


class RefusedDestination(Exception):
    """The host is, or resolves to, an address webhooks may not reach."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_ipv4(address: IPv6Address) -> list[IPv4Address]:
    """IPv4 destinations an IPv6 address leads to through a translator or relay."""
    return [a for a in (address.sixtofour, address.teredo[1] if address.teredo else None) if a is not None]


def _category(address: Address) -> str | None:
    # Most specific first: 169.254.169.254 is link-local before it is private.
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or (isinstance(address, IPv6Address) and address.is_site_local):
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "an address that is not publicly routable"
    return None


def _allowlisted(address: Address) -> bool:
    return any(address in network for network in settings.WEBHOOK_ALLOWED_NETWORKS)


def refusal(address: Address) -> str | None:
    """Why webhooks may not reach `address`, or None when they may."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d
    elif isinstance(address, IPv6Address) and address in _NAT64:
        # What DNS64 answers for an IPv4-only name: judged as that IPv4 address.
        address = IPv4Address(int(address) & 0xFFFFFFFF)
    candidates: list[Address] = [address]
    if isinstance(address, IPv6Address):
        candidates += _embedded_ipv4(address)
    for candidate in candidates:
        if _allowlisted(candidate):
            continue
        reason = _category(candidate)
        if reason is not None:
            return reason
    return None


def resolve(host: str, port: int) -> list[str]:
    """The addresses to connect to for `host`, every one of them checked.
    Raises RefusedDestination when any address the name has is refused (a name
    that mixes public and internal addresses is not a receiver), and
    socket.gaierror when the name does not resolve."""
    try:
        literal: Address | None = ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        reason = refusal(ip_address(address))
        if reason is not None:
            raise RefusedDestination(f"{host} is {reason}" if literal else f"{host} resolves to {reason}")
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "no address")
    return addresses


# --- Connections pinned to a checked address ----------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to `addresses` (already checked) in order; the Host header, and
    for HTTPS the SNI name and the certificate check, still use the host."""

    addresses: list[str] = []

    def connect(self) -> None:
        error: OSError | None = None
        for address in self.addresses:
            try:
                self.sock = socket.create_connection((address, self.port), self.timeout)
            except OSError as exc:
                error = exc
                continue
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return
        raise error or OSError("no address to connect to")


class _PinnedHTTPSConnection(http.client.HTTPSConnection, _PinnedHTTPConnection):
    # HTTPSConnection.connect calls super().connect(), the pinned one above,
    # then wraps the socket with server_hostname=host.
    pass


@cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def connection(scheme: str, host: str, port: int, addresses: list[str], timeout: float) -> http.client.HTTPConnection:
    """An HTTP(S) connection to `host` that can only reach `addresses`."""
    pinned: _PinnedHTTPConnection
    if scheme == "https":
        pinned = _PinnedHTTPSConnection(host, port, timeout=timeout, context=_tls_context())
    else:
        pinned = _PinnedHTTPConnection(host, port, timeout=timeout)
    pinned.addresses = addresses
    return pinned
