"""All websocket routes. Each consumer authenticates its own peer (device
credentials or the operator's session), so no shared auth middleware wraps them."""

from __future__ import annotations

from typing import Any

from django.urls import re_path

from console.routing import websocket_urlpatterns as console_routes
from devicelink.consumer import DeviceSocketConsumer
from nerveshub.web.routing import websocket_urlpatterns as page_routes

websocket_urlpatterns: list[Any] = [
    # Shared-secret devices use /device-socket, certificate devices /socket (docs/device-protocol.md §1.1).
    re_path(r"^(?:device-socket|socket)/websocket/?$", DeviceSocketConsumer.as_asgi()),
    # The operators' console (session cookie + origin check, see console/routing.py).
    *console_routes,
    # The organization pages' live updates (same checks as the console).
    *page_routes,
]
