"""Content-Security-Policy on every response Django renders (org pages, admin,
console page, API errors).

Django 5.2 has no built-in CSP (it arrives in 6.0), hence this small middleware.
The policy allows only the hub's own scripts, styles and images (and the map
tiles of MAP_TILE_URL): no inline
script, no plugin, no framing, no <base> rewrite, and forms post only to the
hub. connect-src names the websocket origins explicitly because older browsers
do not let 'self' match ws:/wss:. Inline styles stay allowed: the terminal
library sets them from script, and a style cannot run code.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def build_policy(public_url: str, tile_url: str = "") -> str:
    parts = urlsplit(public_url)
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    # Map tiles (MAP_TILE_URL) are the only images from elsewhere.
    tiles = urlsplit(tile_url)
    tile_origin = f" {tiles.scheme}://{tiles.netloc}" if tiles.scheme in ("http", "https") and tiles.netloc else ""
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self' 'unsafe-inline'",
        "img-src": "'self' data:" + tile_origin,
        "connect-src": f"'self' {ws_scheme}://{parts.netloc}",
        "object-src": "'none'",
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.policy = build_policy(settings.PUBLIC_URL, settings.MAP_TILE_URL)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # A view that set its own (stricter) policy keeps it.
        response.headers.setdefault(HEADER, self.policy)
        return response
