"""ASGI entry point: HTTP goes to Django, websockets to the Channels routes.

Order matters: get_asgi_application() sets Django up before any consumer module
(which imports models) is imported.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from devicelink.polling import DevicePollApp  # noqa: E402
from firmware.downloads import FirmwareDownloadApp  # noqa: E402
from nerveshub.lib.bodyguard import BodyGuard  # noqa: E402
from nerveshub.routing import websocket_urlpatterns  # noqa: E402

http_app = django_asgi_app
if settings.SERVE_STATIC:
    # Only when the hub serves its own static files (embedded mode, no proxy).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    http_app = ASGIStaticFilesHandler(django_asgi_app)

application = ProtocolTypeRouter(
    {
        # /firmware/<token>/<uuid>.fw is streamed by a small ASGI app, not a
        # Django view: see firmware/downloads.py for why. BodyGuard refuses
        # bodies that are too large or lack credentials before reading them
        # (nerveshub/lib/bodyguard.py). Polling devices' /device/update and
        # /device/me are answered by devicelink.polling, also ahead of Django.
        "http": BodyGuard(FirmwareDownloadApp(DevicePollApp(http_app))),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
