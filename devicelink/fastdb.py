"""The returning device's statements on the event loop (PostgreSQL).

A call on a device database thread (devicelink.dbthreads) is a hop to the
thread and back, and every thread then contends with the event loop for the
GIL: at eight concurrent connects the hops and the waits for the GIL, not the
statement, were most of a returning device's join latency (docs/benchmarks.md,
M3). The one statement such a connect needs (devicelink.hotpath) runs here
instead, on a psycopg async pool of the process's own, prepared once per
pooled connection.

Everything here runs alone and autocommitted, as the same statement does on a
device database thread: nothing takes part in a Django transaction, and data a
test holds in an open transaction is not visible here (such a test gets the
thread path, see `devicelink.auth.connect_returning_device`). The pool belongs
to the event loop that made it: a process runs one loop, and a test that runs
several gets a pool per loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.conf import settings
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

# Django's own keys in OPTIONS, which libpq does not know.
_DJANGO_OPTIONS = ("pool", "server_side_binding", "isolation_level", "assume_role", "cursor_factory", "context")

_pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
_pool_loop: asyncio.AbstractEventLoop | None = None
_opening: asyncio.Lock | None = None


def pool_timeout() -> float:
    """How long a statement waits for a connection: DATABASE_POOL_TIMEOUT, as the
    thread path waits, below the device's connect timeout (the device is told
    503 in time)."""
    pool = (settings.DATABASES["default"].get("OPTIONS") or {}).get("pool") or {}
    return float(pool.get("timeout", 3)) if isinstance(pool, dict) else 3.0


def conninfo() -> str:
    """The default database's connection string, as Django connects to it."""
    db = settings.DATABASES["default"]
    options = {k: v for k, v in (db.get("OPTIONS") or {}).items() if k not in _DJANGO_OPTIONS}
    params = {
        "dbname": db.get("NAME") or None,
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "client_encoding": "UTF8",
        **options,
    }
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


async def _the_pool() -> AsyncConnectionPool[AsyncConnection[Any]]:
    global _pool, _pool_loop, _opening
    loop = asyncio.get_running_loop()
    if _pool is not None and _pool_loop is loop:
        return _pool
    if _opening is None or _pool_loop is not loop:
        _opening, _pool_loop, _pool = asyncio.Lock(), loop, None
    async with _opening:
        if _pool is None:
            pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
                conninfo(),
                min_size=1,
                max_size=max(1, settings.DEVICE_DB_THREADS),
                kwargs={"autocommit": True},
                open=False,
                name="device-fast-path",
            )
            await pool.open()
            _pool = pool
    return _pool


async def fetchone(sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Run one statement, prepared on its connection, and return its first row.
    Raises psycopg's errors (psycopg_pool.PoolTimeout when no connection came in time)."""
    pool = await _the_pool()
    async with pool.connection(timeout=pool_timeout()) as conn:
        cursor = await conn.execute(sql, params, prepare=True)
        row: tuple[Any, ...] | None = await cursor.fetchone()
        return row


async def execute(sql: str, params: dict[str, Any]) -> int:
    """Run one statement, prepared on its connection; returns its row count."""
    pool = await _the_pool()
    async with pool.connection(timeout=pool_timeout()) as conn:
        cursor = await conn.execute(sql, params, prepare=True)
        return cursor.rowcount
