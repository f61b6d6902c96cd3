"""What the open organization pages are told about devices, gathered per
organization and sent at most once per LIVE_FLUSH_MS per server process
(docs/pages.md, "Live pages").

Domain code never calls this module: it calls `devices.publish`, whose page
functions hand their change here after commit. A change costs a dict update
under a lock, no I/O and no query: a device connecting, reporting or updating
is on the hot path. The flusher (one task per server process, started by the
device link's dispatcher; a thread in a process without one, such as a Celery
worker) then sends one channel-layer message per organization with changes to
that organization's group, which the pages' sockets (nerveshub.web.live) join.

Coalescing: the latest value of each field of each device wins, so a device
that connects, reports progress five times and disconnects within one flush is
one row. At most LIVE_MAX_ROWS devices are kept per organization and flush;
the others are only counted (`more`), and the pages refetch their counts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

logger = logging.getLogger(__name__)

BATCH: Literal["pages.batch"] = "pages.batch"


class DeviceChange(TypedDict, total=False):
    """One device's row as the pages patch it; only the fields that changed."""

    id: int
    presence: str  # connected, disconnected or polling (devices.models.ConnectionStatus)
    seen: str  # last seen, ISO 8601
    fw: str  # firmware version
    health: str  # healthy, warning, unhealthy or unknown (devices.health)
    update: str  # the in-flight update's status (deployments.models.UpdateStatus)
    progress: int  # its progress, 0 to 100
    deployment: int  # the deployment that update belongs to


class Batch(TypedDict):
    """The group message to one organization's pages (handler: pages_batch)."""

    type: Literal["pages.batch"]
    devices: list[DeviceChange]
    more: int  # devices that changed beyond `devices`
    deployments: list[int]  # deployments whose progress moved
    counts: bool  # online / offline / updating counts may have moved
    seen: str  # every connected device of the org was seen at this time ("" if not)


def org_group(org_id: int) -> str:
    return f"pages.org.{org_id}"


@dataclass
class _Pending:
    rows: dict[int, DeviceChange] = field(default_factory=dict)
    overflow: set[int] = field(default_factory=set)
    deployments: set[int] = field(default_factory=set)
    counts: bool = False
    seen: str = ""


class Feed:
    """Changes not sent yet, per organization. Thread-safe: changes are noted
    on the device database threads and taken by the flusher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._orgs: dict[int, _Pending] = {}

    def device(self, org_id: int, device_id: int, change: DeviceChange, *, counts: bool = False) -> None:
        cap = settings.LIVE_MAX_ROWS
        with self._lock:
            pending = self._orgs.get(org_id)
            if pending is None:
                pending = self._orgs[org_id] = _Pending()
            row = pending.rows.get(device_id)
            if row is not None:
                row.update(change)
            elif len(pending.rows) < cap:
                pending.rows[device_id] = {"id": device_id, **change}
            else:
                pending.overflow.add(device_id)
            if counts:
                pending.counts = True

    def deployment(self, org_id: int, deployment_id: int) -> None:
        with self._lock:
            self._orgs.setdefault(org_id, _Pending()).deployments.add(deployment_id)

    def seen(self, org_ids: set[int], at: str) -> None:
        with self._lock:
            for org_id in org_ids:
                self._orgs.setdefault(org_id, _Pending()).seen = at

    def pending(self) -> bool:
        return bool(self._orgs)

    def take(self) -> list[tuple[int, Batch]]:
        """Every organization's batch, emptying the feed."""
        with self._lock:
            orgs, self._orgs = self._orgs, {}
        return [
            (
                org_id,
                Batch(
                    type=BATCH,
                    devices=list(p.rows.values()),
                    more=len(p.overflow),
                    deployments=sorted(p.deployments),
                    counts=p.counts or bool(p.overflow),
                    seen=p.seen,
                ),
            )
            for org_id, p in orgs.items()
        ]


feed = Feed()

# The organization of each device whose socket this process recorded: a
# device's later events (reports, progress, heartbeats) name only the device,
# and looking its organization up would cost a query per event. A device never
# moves between organizations.
_org_of: dict[int, int] = {}


def remember_org(device_id: int, org_id: int) -> None:
    _org_of[device_id] = org_id


def known_org(device_id: int) -> int | None:
    return _org_of.get(device_id)


# --- the flusher ---------------------------------------------------------------------

_flusher_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()
# Figures for the benchmark and the logs: messages and devices sent.
sent = {"messages": 0, "rows": 0}


async def flush(layer: Any = None) -> int:
    """Send every pending batch to its organization's group; returns how many."""
    layer = layer if layer is not None else get_channel_layer()
    batches = feed.take()
    if layer is None:
        return 0
    for org_id, batch in batches:
        try:
            await layer.group_send(org_group(org_id), batch)
        except Exception:
            # The pages miss these rows; their next refetch of counts shows them.
            logger.exception("could not send live changes to organization %s", org_id)
            continue
        sent["messages"] += 1
        sent["rows"] += len(batch["devices"])
    return len(batches)


async def run_flusher() -> None:
    """Flush every LIVE_FLUSH_MS, for as long as this event loop runs (the
    dispatcher's background task)."""
    global _flusher_loop
    loop = asyncio.get_running_loop()
    _flusher_loop = loop
    try:
        while True:
            await asyncio.sleep(settings.LIVE_FLUSH_MS / 1000)
            if feed.pending():
                await flush()
    finally:
        if _flusher_loop is loop:
            _flusher_loop = None


def ensure_flushing() -> None:
    """A process whose event loop runs no flusher (a Celery worker, a
    management command) flushes from a thread of its own."""
    global _thread
    loop = _flusher_loop
    if (loop is not None and not loop.is_closed()) or _thread is not None:
        return
    with _thread_lock:
        if _thread is None:
            _thread = threading.Thread(target=_flush_in_thread, name="live-pages-flusher", daemon=True)
            _thread.start()


def _flush_in_thread() -> None:
    while True:
        time.sleep(settings.LIVE_FLUSH_MS / 1000)
        loop = _flusher_loop
        if (loop is not None and not loop.is_closed()) or not feed.pending():
            continue
        try:
            async_to_sync(flush)()
        except Exception:
            logger.exception("live pages flush failed")
