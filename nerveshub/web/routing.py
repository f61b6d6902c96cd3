"""The organization pages' websocket route, for nerveshub.routing: the peer is
a signed-in person (session cookie, AuthMiddlewareStack) on one of the hub's
own origins (console.origin), as for the console."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from django.urls import re_path

from console.origin import ExactOriginValidator
from nerveshub.web.live import LivePagesConsumer

websocket_urlpatterns: list[Any] = [
    re_path(
        r"^org/(?P<org>[-a-z0-9_]+)/live/socket/?$",
        ExactOriginValidator(AuthMiddlewareStack(LivePagesConsumer.as_asgi())),
    ),
]
