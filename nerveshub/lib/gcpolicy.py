"""When a hub server process runs CPython's full garbage collections.

A full collection walks every object the collector tracks, and nothing else
runs meanwhile: at 15,000 device sockets per process that was up to a second
in which no heartbeat was answered (docs/benchmarks.md, M1: p99 907 ms). With
CPython's defaults one is due whenever a quarter as many objects again as the
old generation holds have been promoted into it, which a process that answers
a heartbeat every millisecond reaches every few minutes, however little of
it is garbage.

So a hub process (nerveshub.serve) takes the full collections over:

* `gc.freeze()` once start-up is done: the modules' objects, a few hundred
  thousand, are never walked again;
* the two young generations are collected automatically as before (short-lived
  cycles die there); automatic full collections are off;
* a full collection runs on the event loop when garbage may have reached the
  old generation: once `CLOSES_PER_COLLECTION` (or half the open sockets, if
  more) device sockets have ended since the last one, since a closed socket's
  objects are what leaves cycles there, and in any case every
  `FULL_COLLECTION_SECONDS`.

Each full collection is logged with its duration and what it freed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

FULL_COLLECTION_SECONDS = 600.0
CLOSES_PER_COLLECTION = 1000
CHECK_SECONDS = 5.0
# Larger than any count of young collections between two of ours: automatic
# full collections never come due.
_NEVER = 1_000_000_000

_closed = 0
_installed = False
_task: asyncio.Task[None] | None = None


def socket_closed() -> None:
    """A device socket ended (its consumer returned)."""
    global _closed
    _closed += 1


def start(open_sockets: Callable[[], int]) -> None:
    """Take the full collections over, from the running event loop (once per
    process); `open_sockets` says how many device sockets are open."""
    global _installed, _task
    if _installed:
        return
    _installed = True
    gc.collect()  # what start-up left as garbage, before it is frozen
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, _NEVER)
    _task = asyncio.get_running_loop().create_task(_schedule(open_sockets), name="full-collections")


async def _schedule(open_sockets: Callable[[], int]) -> None:
    global _closed
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        due = max(CLOSES_PER_COLLECTION, open_sockets() // 2)
        if _closed < due and loop.time() - last < FULL_COLLECTION_SECONDS:
            continue
        closed, _closed = _closed, 0
        started = time.perf_counter()
        freed = gc.collect()
        last = loop.time()
        logger.info(
            "full garbage collection: %.0f ms, %d objects freed, %d sockets ended since the last",
            (time.perf_counter() - started) * 1000,
            freed,
            closed,
        )
