"""The console's websocket route, for nerveshub.routing. Unlike the device
socket, the peer is a logged-in person: the session cookie is read by
AuthMiddlewareStack, and the Origin header must name an ALLOWED_HOSTS host so
another site cannot open the socket with the operator's cookie."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import re_path

from console.consumers import ConsoleConsumer

websocket_urlpatterns: list[Any] = [
    re_path(
        r"^console/(?P<device_id>[0-9]+)/socket/?$",
        AllowedHostsOriginValidator(AuthMiddlewareStack(ConsoleConsumer.as_asgi())),
    ),
]
