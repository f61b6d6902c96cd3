"""Failure counters in Django's cache: fixed windows, checked before the work.

A bucket is a name and a limit. `blocked` says whether any bucket has reached its
limit in the current window; `record` adds one failure to each. The first
failure of a window sets the counter with the window as its lifetime, so a
counter never outlives the window it counts and the cache holds at most one
small entry per bucket that failed recently.

The cache is Redis when the hub has one (every process sees the same counts)
and the process's memory in embedded mode (settings.CACHES). When the cache
cannot be reached the counters are skipped, not the request: a limit protects
the hub, and a cache outage must not become an authentication outage.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.redis import RedisCache

from nerveshub.lib import aioredis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    name: str
    limit: int  # 0: no limit

    @classmethod
    def of(cls, kind: str, value: str, limit: int) -> Bucket:
        # Hashed: values may be credentials (a key) or long; the cache needs neither.
        digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]
        return cls(f"failures:{kind}:{digest}", limit)


_counters: BaseCache | None = None


def _cache() -> BaseCache:
    """One cache client per process. Django keeps cache clients per asyncio
    context, as it does database connections: read from a device socket's
    context, `django.core.cache.cache` was a new client, and with Redis a new
    TCP connection, for every connect (a seventh of a join's CPU in M3,
    docs/benchmarks.md). The backends are safe to share between threads."""
    global _counters
    if _counters is None:
        _counters = caches.create_connection(DEFAULT_CACHE_ALIAS)
    return _counters


def _active(buckets: Iterable[Bucket]) -> list[Bucket]:
    return [b for b in buckets if b.limit > 0]


def blocked(buckets: Sequence[Bucket]) -> bool:
    active = _active(buckets)
    if not active:
        return False
    try:
        counts = _cache().get_many([b.name for b in active])
    except Exception as exc:  # whatever the backend raises (module docstring: skip the limit)
        logger.warning("failure counters unavailable: %r", exc)
        return False
    return any(int(counts.get(b.name) or 0) >= b.limit for b in active)


async def blocked_async(buckets: Sequence[Bucket]) -> bool:
    """`blocked`, from the event loop: with Redis one MGET on the loop's own
    client (nerveshub.lib.aioredis), reading the counters `record` wrote through
    Django's cache (which keeps an integer as its digits); in memory, `blocked`."""
    active = _active(buckets)
    if not active:
        return False
    cache = _cache()
    if not isinstance(cache, RedisCache):
        return blocked(active)  # the process's memory: no I/O
    keys = [cache.make_and_validate_key(b.name) for b in active]
    try:
        values = await aioredis.client().mget(keys)
        counts = [int(value or 0) for value in values]
    except Exception as exc:  # as in blocked()
        logger.warning("failure counters unavailable: %r", exc)
        return False
    return any(count >= b.limit for count, b in zip(counts, active, strict=True))


def record(buckets: Sequence[Bucket], window: int) -> None:
    for bucket in _active(buckets):
        try:
            if not _cache().add(bucket.name, 1, timeout=window):
                try:
                    _cache().incr(bucket.name)
                except ValueError:  # expired between add and incr: start a new window
                    _cache().add(bucket.name, 1, timeout=window)
        except Exception as exc:  # as in blocked()
            logger.warning("failure counter %s not recorded: %r", bucket.name, exc)
