"""The console's websocket route, for nerveshub.routing. Unlike the device
socket, the peer is a logged-in person: the session cookie is read by
AuthMiddlewareStack, and the Origin header must be exactly one of the hub's own
origins (console.origin) so another site cannot open the socket with the
operator's cookie."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from django.urls import re_path

from console.consumers import ConsoleConsumer
from console.origin import ExactOriginValidator

websocket_urlpatterns: list[Any] = [
    re_path(
        r"^console/(?P<device_id>[0-9]+)/socket/?$",
        ExactOriginValidator(AuthMiddlewareStack(ConsoleConsumer.as_asgi())),
    ),
]
