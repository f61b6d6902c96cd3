"""Where the device socket runs its database calls.

Channels' `database_sync_to_async` runs every ORM call of a process on one
shared thread (asgiref's thread-sensitive mode), so a reconnecting fleet's joins
queue behind each other, one at a time. On PostgreSQL the device socket uses a
pool of DEVICE_DB_THREADS threads instead, each with its own connection, so
joins overlap. SQLite keeps the single thread: it has one writer anyway, and
parallel writers would only trade queueing for "database is locked" waits.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.db import DatabaseSyncToAsync
from django.conf import settings

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_parallel: bool | None = None


def _use_pool() -> bool:
    # Decided once per process, from the settings. Asking `connections` on the
    # event loop would create a connection wrapper per asyncio context, that is
    # per device socket (Django keeps connections in a context-local store).
    global _parallel
    if _parallel is None:
        vendor = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        _parallel = settings.DEVICE_DB_THREADS > 1 and vendor == "postgresql"
    return _parallel


def backlog() -> int:
    """Database calls waiting for a device thread (0 without the pool)."""
    return _executor._work_queue.qsize() if _executor is not None else 0


def device_db_call(func: Callable[..., T]) -> Callable[..., Any]:
    """`func` made awaitable, run on the device pool when it applies (else like
    channels.db.database_sync_to_async). Named apart from Channels' function:
    the two run on different threads."""
    global _executor
    wrapped: Callable[..., Any]
    if not _use_pool():
        wrapped = DatabaseSyncToAsync(func)
        return wrapped
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=settings.DEVICE_DB_THREADS, thread_name_prefix="device-db")
    wrapped = DatabaseSyncToAsync(func, thread_sensitive=False, executor=_executor)
    return wrapped
