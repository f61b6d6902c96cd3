"""The per-process dispatcher of the device sockets (`dispatcher`, one
`Dispatcher` per server process): who is connected here, plus the two background
tasks each server process runs for all its sockets together.

* the dispatcher: one channel per process, in the FLEET_GROUP group. A fleet
  message arrives once and is written to the matching local sockets directly. A
  message for one socket (its address is this channel plus the socket's number,
  devices.publish.send_to_socket) is handed to that socket: a device socket has
  no channel of its own, which would cost it a reader task and its buffers;
* the sweeper: one timer per process (not one per socket) that closes sockets
  idle longer than DEVICE_IDLE_TIMEOUT and, every DEVICE_LAST_SEEN_INTERVAL,
  refreshes last_seen_at of all local devices with one UPDATE per 1000;
* the lease: the process's claim, renewed every HUB_LEASE_RENEW_SECONDS, that
  the sockets it recorded are alive; the same task records the disconnects of
  processes whose lease expired (docs/device-link.md, "Presence");
* the live pages' flusher: the devices' changes this process noted, sent to
  the open organization pages once per LIVE_FLUSH_MS (devices.pagefeed);
* in embedded mode only, the periodic tasks that Celery beat runs otherwise
  (every entry of CELERY_BEAT_SCHEDULE: rollouts, firmware and webhook sweeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from celery.schedules import maybe_schedule
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils.module_loading import import_string

from devicelink import dbthreads
from devicelink.dbthreads import device_db_call
from devices import pagefeed
from devices.publish import FLEET_GROUP, socket_address
from devices.services import (
    close_device_connections,
    close_out_expired_leases,
    refresh_last_seen,
    renew_lease,
    take_lease,
)

logger = logging.getLogger(__name__)

# channels_redis forgets group members after a day; re-join well before that.
GROUP_REFRESH_SECONDS = 3600
# How long disconnects gather before they are written together.
DISCONNECT_BATCH_SECONDS = 0.05


class LocalSocket(Protocol):
    device_id: int
    deployment_id: int | None
    last_frame: float

    def deliver(self, message: dict[str, Any]) -> None: ...

    async def push_fleet(self, event: str, message: dict[str, Any]) -> None: ...

    async def close_idle(self) -> None: ...

    async def close_replaced(self) -> None: ...


class ConnectLimiter:
    """A token bucket over device connects in this process. A reconnect herd
    (every device of a restarted node at once) is shed before any database or
    crypto work: a refused device retries with its own backoff (1 to 60 s,
    jittered), which spreads the herd out."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = 0.0

    def admit(self, now: float) -> bool:
        if self.rate <= 0:
            return True  # 0 turns the limit off
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Dispatcher:
    def __init__(self) -> None:
        self.sockets: dict[int, LocalSocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._encoded: dict[int, tuple[str, dict[str, Any]]] = {}
        self.connects = ConnectLimiter(settings.DEVICE_CONNECT_RATE, settings.DEVICE_CONNECT_BURST)
        self.shed = 0  # connects refused by the limiter, for the logs and benchmarks
        self.onboarding = 0  # connects and device joins under way (see `onboard`)
        self._closed: list[tuple[int, str]] = []  # (device id, socket address) not yet recorded
        self._recorder: asyncio.Task[None] | None = None
        self._channel = ""  # this process's dispatcher channel (per event loop)
        self._addressed: dict[int, LocalSocket] = {}  # socket number -> socket
        self._numbers = 0
        self._lease_id: int | None = None  # this process's lease (per event loop)
        self._leasing: asyncio.Lock | None = None
        self._fresh_process = False  # set by start(): no lease of this process before

    def admit_connect(self) -> bool:
        """The connect rate limit, the database backlog and the connects and
        joins under way: each sheds a connect before it costs anything
        (settings DEVICE_CONNECT_RATE, _BACKLOG, _CONCURRENCY)."""
        backlog, concurrency = settings.DEVICE_CONNECT_BACKLOG, settings.DEVICE_CONNECT_CONCURRENCY
        admitted = (
            not (concurrency and self.onboarding >= concurrency)
            and not (backlog and dbthreads.backlog() >= backlog)
            and self.connects.admit(asyncio.get_running_loop().time())
        )
        if not admitted:
            self.shed += 1
        return admitted

    @contextlib.contextmanager
    def onboard(self) -> Iterator[None]:
        """Count a connect (from its admission to its accept or refusal) or a
        device join (to its reply) as under way."""
        self.onboarding += 1
        try:
            yield
        finally:
            self.onboarding -= 1

    # --- registry --------------------------------------------------------------

    async def attach(self, socket: LocalSocket) -> tuple[str, int]:
        """Give a new socket its address (before anything can be sent to it);
        returns the address and the socket's number."""
        self._ensure_started()
        layer = get_channel_layer()
        if not self._channel and layer is not None:
            await self._own_channel(layer)
        self._numbers += 1
        self._addressed[self._numbers] = socket
        return socket_address(self._channel, self._numbers), self._numbers

    def lease_taken(self) -> int | None:
        """This process's lease if it is taken already (it is, once the process
        has started or recorded a connection)."""
        return self._lease_id

    async def lease(self) -> int:
        """This process's lease, taken on first use (one INSERT per process):
        every connection it records names it."""
        if self._lease_id is not None:
            return self._lease_id
        if self._leasing is None:
            self._leasing = asyncio.Lock()
        async with self._leasing:
            if self._lease_id is None:
                layer = get_channel_layer()
                channel = await self._own_channel(layer) if layer is not None else ""
                self._lease_id = await device_db_call(take_lease)(channel)
        return self._lease_id

    def start(self) -> None:
        """Start the background tasks when the server process starts, not at
        its first socket: a process restarted after a crash records the
        disconnects its predecessor left (its lease) before any device is back,
        and in embedded mode runs the beat even if no device comes back."""
        self._fresh_process = True
        self._ensure_started()

    def detach(self, number: int) -> None:
        self._addressed.pop(number, None)

    async def _own_channel(self, layer: Any) -> str:
        channel = await layer.new_channel()
        if not self._channel:  # the first of the dispatcher and attach() names it
            self._channel = channel
        return self._channel

    def register(self, socket: LocalSocket) -> LocalSocket | None:
        """Add the socket; returns the one it replaces in this process, if any."""
        self._ensure_started()
        previous = self.sockets.get(socket.device_id)
        self.sockets[socket.device_id] = socket
        return previous if previous is not socket else None

    def unregister(self, socket: LocalSocket) -> None:
        if self.sockets.get(socket.device_id) is socket:
            del self.sockets[socket.device_id]

    def connection_closed(self, device_id: int, channel_name: str) -> None:
        """Record, shortly and together with the others of the same burst, that
        this socket closed. Disconnects come in bursts (a network blip, a
        restarting peer): one transaction for the burst instead of one per
        device, so the reconnects that follow do not queue behind them."""
        self._closed.append((device_id, channel_name))
        if self._recorder is None or self._recorder.done():
            self._recorder = self._spawn(self._record_closed(), "device-disconnects")

    async def _record_closed(self) -> None:
        await asyncio.sleep(DISCONNECT_BATCH_SECONDS)
        delay = 1.0
        while self._closed:
            batch, self._closed = self._closed[:1000], self._closed[1000:]
            try:
                await device_db_call(close_device_connections)(batch)
            except Exception:
                # Kept and retried (the database may be restarting): a device
                # left marked connected would look online until it came back.
                logger.exception("could not record %d disconnects; retrying in %.0f s", len(batch), delay)
                self._closed[:0] = batch
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            else:
                delay = 1.0

    # --- background tasks --------------------------------------------------------

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and all(not t.done() for t in self._tasks):
            return
        for task in self._tasks:
            task.cancel()
        if self._loop is not loop:
            # A new event loop (tests run several): the old loop's sockets and
            # dispatcher channel are gone with it.
            self._channel = ""
            self._addressed.clear()
            self._lease_id, self._leasing = None, None
        self._loop = loop
        self._tasks = [
            self._spawn(self._dispatch(), "device-dispatcher"),
            self._spawn(self._sweep(), "device-socket-sweeper"),
            self._spawn(self._hold_lease(), "hub-lease"),
            # The organization pages' live changes, gathered per process (devices.pagefeed).
            self._spawn(pagefeed.run_flusher(), "live-pages"),
        ]
        if settings.EMBEDDED:
            # No Celery beat in embedded mode: this process is the whole hub, so it
            # runs the beat's schedule itself.
            self._tasks.append(self._spawn(self._embedded_beat(), "embedded-beat"))

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        task.add_done_callback(_log_crash)
        return task

    async def _dispatch(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        # The default "specific" prefix on purpose: channels_redis serves every
        # local channel with one prefix from one Redis list, but channels with
        # different prefixes take turns on one receive lock, each blocking up to
        # 5 s, so a second prefix delays every per-socket message by up to 5 s.
        channel = await self._own_channel(layer)
        await layer.group_add(FLEET_GROUP, channel)
        joined_at = asyncio.get_running_loop().time()
        while True:
            try:
                message = await layer.receive(channel)
            except Exception:
                # Redis restarting or a read timing out must not end fleet
                # delivery for every socket of this process: wait and re-join
                # (a restarted Redis has forgotten the group).
                logger.exception("fleet dispatcher could not read; retrying in 1 s")
                await asyncio.sleep(1)
                with contextlib.suppress(Exception):
                    await layer.group_add(FLEET_GROUP, channel)
                    joined_at = asyncio.get_running_loop().time()
                continue
            now = asyncio.get_running_loop().time()
            if now - joined_at > GROUP_REFRESH_SECONDS:
                await layer.group_add(FLEET_GROUP, channel)
                joined_at = now
            number = message.get("socket")
            if number is not None:
                socket = self._addressed.get(number)
                if socket is not None:
                    socket.deliver(message)
                else:
                    logger.debug("%s for closed socket %s dropped", message.get("type"), number)
                continue
            try:
                await self.deliver_fleet(message)
            except Exception:
                logger.exception("fleet message %s failed", message.get("type"))

    async def deliver_fleet(self, message: dict[str, Any]) -> int:
        if message.get("type") != "fleet.push":
            return 0
        device_ids = message.get("device_ids")
        deployment_id = message.get("deployment_id")
        if device_ids is not None:
            targets = [self.sockets[i] for i in device_ids if i in self.sockets]
        else:
            targets = [s for s in list(self.sockets.values()) if s.deployment_id == deployment_id]
        event = str(message["event"])
        for socket in targets:
            await socket.push_fleet(event, message)
        return len(targets)

    async def _sweep(self) -> None:
        idle = settings.DEVICE_IDLE_TIMEOUT
        period = max(1.0, min(30.0, idle / 4))
        loop = asyncio.get_running_loop()
        last_refresh = loop.time()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for socket in [s for s in self.sockets.values() if now - s.last_frame > idle]:
                await socket.close_idle()
            if now - last_refresh >= settings.DEVICE_LAST_SEEN_INTERVAL and self.sockets:
                last_refresh = now
                await _refresh_last_seen(list(self.sockets))

    async def _hold_lease(self) -> None:
        """Renew this process's lease and close out the expired leases of
        others, every HUB_LEASE_RENEW_SECONDS: one UPDATE and one indexed
        SELECT per period, whatever the number of sockets."""
        period = settings.HUB_LEASE_RENEW_SECONDS
        # An embedded hub is the only process there is: a lease left by anyone
        # else is its own predecessor's, dead by definition (a kill -9 or an
        # OOM leaves no time to record anything). With several processes one
        # cannot tell, so the others' leases are left to expire.
        everyone_else = settings.EMBEDDED and self._fresh_process
        while True:
            try:
                lease_id = await self.lease()
                gone = await device_db_call(close_out_expired_leases)(lease_id, all_others=everyone_else)
            except Exception:
                logger.exception("hub lease: could not take or sweep; retrying in %d s", period)
            else:
                everyone_else = False
                if gone:
                    logger.warning("recorded %d devices offline: their hub process stopped renewing", len(gone))
            await asyncio.sleep(period)
            if self._lease_id is None:
                continue
            try:
                renewed = await device_db_call(renew_lease)(self._lease_id)
            except Exception:
                # The database may be restarting: the lease runs on; if it
                # expires meanwhile, this process's devices show offline until
                # a renewal goes through.
                logger.exception("hub lease %s: could not renew", self._lease_id)
                continue
            if not renewed:
                await self._lost_lease()

    async def _lost_lease(self) -> None:
        """Another process closed out this one's lease (it stalled past its
        lease, or its database was unreachable that long): its devices are
        recorded offline. Take a new lease and close the sockets, so that
        each device reconnects and is recorded afresh rather than being
        connected here and offline in the database."""
        logger.warning(
            "hub lease %s was closed out by another process; closing %d sockets so they reconnect",
            self._lease_id,
            len(self.sockets),
        )
        self._lease_id = None
        await self.lease()
        for socket in list(self.sockets.values()):
            await socket.close_replaced()

    async def _embedded_beat(self) -> None:
        """Every entry of CELERY_BEAT_SCHEDULE (rollouts, firmware sweep,
        webhook sweep), each on its own period, first one period after start,
        as Celery beat runs them. Each run is in a thread of its own, so a long
        firmware validation does not hold up the webhook sweep."""
        await asyncio.gather(*(_beat_entry(name, entry) for name, entry in settings.CELERY_BEAT_SCHEDULE.items()))


async def _beat_entry(name: str, entry: dict[str, Any]) -> None:
    task = import_string(entry["task"])
    schedule = maybe_schedule(entry["schedule"])
    run = database_sync_to_async(task, thread_sensitive=False)
    while True:
        await asyncio.sleep(max(schedule.remaining_estimate(schedule.now()).total_seconds(), 0.0))
        try:
            await run(*entry.get("args", ()), **entry.get("kwargs", {}))
        except Exception:
            logger.exception("embedded beat: %s failed", name)


async def _refresh_last_seen(device_ids: list[int]) -> None:
    try:
        await database_sync_to_async(refresh_last_seen)(device_ids)
    except Exception:
        logger.exception("last_seen refresh of %d devices failed", len(device_ids))


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())


dispatcher = Dispatcher()

Callback = Callable[[], Coroutine[Any, Any, None]]
