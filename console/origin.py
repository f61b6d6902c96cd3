"""Which pages may open the console's socket with the operator's cookie.

Channels' AllowedHostsOriginValidator compares only the Origin's host with
ALLOWED_HOSTS: `https://hub:9999` or `http://hub` passed for a hub served at
`https://hub`, so a page on another port of the same host (any other service
there), or plain http spoofed on a network, could drive an operator's console.
Here the Origin must equal, in scheme, host and port (default ports filled in),
one of:

* PUBLIC_URL's origin, and each of CSRF_TRUSTED_ORIGINS (the origins the
  operator trusts for form posts; `https://*.example.com` covers subdomains
  as Django's CSRF check reads it);
* the socket's own origin, as Django's CSRF check accepts a same-origin form:
  http or https (wss, or `SECURE_PROXY_SSL_HEADER` behind the TLS proxy) with
  the request's Host, when that host is in ALLOWED_HOSTS.

A missing or unparsable Origin is refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}

# (scheme, host, port); a host starting with "." stands for its subdomains.
Origin = tuple[str, str, int]


def parse_origin(value: str, *, url: bool = False) -> Origin | None:
    """(scheme, host, port) of an Origin header, or of a URL's origin with url=True."""
    try:
        parts = urlsplit(value.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if not url and (parts.path or parts.query or parts.fragment):
        return None
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def configured_origins() -> list[Origin]:
    origins = []
    for value in [settings.PUBLIC_URL, *settings.CSRF_TRUSTED_ORIGINS]:
        wildcard = "://*." in value
        parsed = parse_origin(value.replace("://*.", "://", 1), url=True)
        if parsed is not None:
            scheme, host, port = parsed
            origins.append((scheme, "." + host if wildcard else host, port))
    return origins


def _matches(origin: Origin, allowed: Origin) -> bool:
    scheme, host, port = allowed
    if host.startswith("."):
        return (origin[0], origin[2]) == (scheme, port) and origin[1].endswith(host)
    return origin == allowed


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin1")
    return None


def own_origin(scope: dict[str, Any]) -> Origin | None:
    """The socket's own origin from its Host header, if that host is allowed."""
    host = _header(scope, b"host")
    if host is None:
        return None
    domain, _ = split_domain_port(host.lower())
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") == "wss"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header is not None:
        name, value = proxy_header
        forwarded = _header(scope, name.removeprefix("HTTP_").lower().replace("_", "-").encode())
        secure = forwarded is not None and forwarded.split(",")[0].strip() == value
    return parse_origin(f"{'https' if secure else 'http'}://{host}")


def origin_allowed(scope: dict[str, Any]) -> bool:
    value = _header(scope, b"origin")
    origin = parse_origin(value) if value is not None else None
    if origin is None:
        return False
    allowed = configured_origins()
    own = own_origin(scope)
    if own is not None:
        allowed.append(own)
    return any(_matches(origin, candidate) for candidate in allowed)


class ExactOriginValidator:
    """ASGI middleware: a websocket whose Origin is not allowed is answered 403."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("ExactOriginValidator guards websockets only")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
