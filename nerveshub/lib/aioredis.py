"""One asyncio Redis client per event loop, for the device socket's hot path.

The failure counters (nerveshub.lib.ratelimit) and the rollout's wake mark
(deployments.rollout) are one Redis command each on every returning device's
connect and join; from the event loop they cost no hop to a thread
(devicelink/fastdb.py says why that matters). redis-py's asyncio connections
belong to the loop that opened them, so the client is kept per loop: a hub
process runs one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings

_client: Any = None
_client_loop: asyncio.AbstractEventLoop | None = None


def client() -> Any:
    """The running loop's client for REDIS_URL (which must be set)."""
    global _client, _client_loop
    loop = asyncio.get_running_loop()
    if _client is None or _client_loop is not loop:
        # Imported on first use: embedded mode (no REDIS_URL) never loads it.
        import redis.asyncio

        _client = redis.asyncio.Redis.from_url(str(settings.REDIS_URL), socket_timeout=2, socket_connect_timeout=2)
        _client_loop = loop
    return _client
