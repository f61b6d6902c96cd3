"""Faults a production hub lives through: the database goes away for a while.
What devices see, and that the hub recovers by itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from devicelink.auth import REASON_PLATFORM
from devices.models import Device
from tests.devices.conftest import Credentials, run, wait_until
from tests.devices.test_device_auth import _upgrade
from tests.support.faults import PrivateRedis, url_through
from tests.support.hub import HubLauncher
from tests.support.nhl_client import nh1_headers
from tests.support.tcp_cut import TcpCut


@pytest.mark.services
def test_it_keeps_devices_connected_through_a_database_outage_and_recovers(
    live_hub: HubLauncher, creds: Credentials, db_cut: TcpCut
) -> None:
    # given: a hub whose database connections go through a forwarder we can cut
    hub = live_hub({"DATABASE_URL": url_through(db_cut)})
    # Rejoins well after a crash (the pool waits DATABASE_POOL_TIMEOUT, 3 s, for a
    # connection first), so the test sees the topic down before the client rejoins.
    connected = creds.device(hub.ws_url, "dev-steady", rejoin_after=8)

    async def scenario() -> tuple[list[Any], tuple[int, dict[str, str]], list[Any], int, list[Any]]:
        await connected.connect()
        # when: the database disappears
        db_cut.interrupt()
        heartbeat = await connected.heartbeat()
        refused = await _upgrade(
            hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "dev-during", int(time.time()))
        )
        # a device report during the outage crashes the topic (phx_error), not the socket
        await connected.push("device", "report_network_interface", {"interface": "wlan0"})
        deadline = time.monotonic() + 15
        while "device" in connected.join_refs and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the client
            await asyncio.sleep(0.1)
        # the client holds its reports while the topic is down
        await connected.push("device", "report_network_interface", {"interface": "wlan1"})
        still_there = await connected.heartbeat()
        # when: it comes back
        db_cut.restore()
        deadline = time.monotonic() + 20
        while True:
            headers = nh1_headers(creds.product_key, creds.product_secret, "dev-after", int(time.time()))
            status, _ = await _upgrade(hub.ws_url, headers)
            if status == 101 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        # the device topic crashed on a report during the outage; the client rejoins
        while connected.rejoins < 1 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the client
            await asyncio.sleep(0.2)
        await connected.push("device", "report_network_interface", {"interface": "eth1"})
        final = await connected.heartbeat()
        await connected.close()
        return heartbeat, refused, still_there, status, final

    heartbeat, refused, still_there, status_after, final = run(scenario())
    # then: heartbeats never needed the database
    assert heartbeat[4] == {"status": "ok", "response": {}}
    assert still_there[4] == {"status": "ok", "response": {}}
    # new connects were refused with the reason devices log, then accepted again
    assert refused[0] == 503 and refused[1]["nh-connection-error-reason"] == REASON_PLATFORM
    assert status_after == 101
    assert final[4] == {"status": "ok", "response": {}}
    wait_until(lambda: Device.objects.get(identifier="dev-steady").network_interface == "eth1")
    assert Device.objects.filter(identifier="dev-after").exists()
    assert not Device.objects.filter(identifier="dev-during").exists()
    assert hub.process.poll() is None
    assert ("device", "report_network_interface") in connected.unsent  # not sent while the topic was down
    connected.assert_no_violations()


@pytest.mark.services
def test_it_keeps_device_sockets_through_a_redis_restart_and_reaches_them_again(
    live_hub: HubLauncher, creds: Credentials, private_redis: PrivateRedis
) -> None:
    # given: two hub processes on a Redis of our own, a device on each
    env = {"REDIS_URL": private_redis.url}
    hubs = [live_hub(env), live_hub(env)]
    devices = [creds.device(hub.ws_url, f"dev-redis-{i}") for i, hub in enumerate(hubs)]

    async def scenario() -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
        for device in devices:
            await device.connect()
        # when: Redis dies, and comes back
        private_redis.kill()
        during = [await device.heartbeat() for device in devices]
        await asyncio.sleep(1)
        private_redis.start()
        await asyncio.sleep(2)
        # then: an operator command made on the other side reaches each device again
        rows = await database_sync_to_async(lambda: list(Device.objects.filter(identifier__startswith="dev-redis-")))()
        deadline = time.monotonic() + 20
        received = []
        for row, device in zip(sorted(rows, key=lambda r: r.identifier), devices, strict=True):
            while True:
                await database_sync_to_async(_identify_through, thread_sensitive=False)(row, private_redis.url)
                try:
                    received.append(await device.next_event("identify", timeout=2))
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
        after = [await device.heartbeat() for device in devices]
        for device in devices:
            await device.close()
        return during, received, after

    during, received, after = run(scenario())
    assert all(reply[4] == {"status": "ok", "response": {}} for reply in during + after)
    assert [message[3] for message in received] == ["identify", "identify"]
    assert all(hub.process.poll() is None for hub in hubs)
    for device in devices:
        device.assert_no_violations()


def _identify_through(device: Device, redis_url: str) -> None:
    """What devices.services.identify_device does, sent through the given Redis
    (the test process's own channel layer points at the shared CI Redis)."""
    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer

    from devices.publish import send_to_socket

    channel = Device.objects.filter(pk=device.pk).values_list("socket_channel", flat=True).get()
    layer = RedisChannelLayer(
        hosts=[redis_url], prefix=cast(dict[str, str], settings.CHANNEL_LAYERS["default"]["CONFIG"])["prefix"]
    )
    message = {"type": "device.push", "topic": "device", "event": "identify", "payload": {}}
    async_to_sync(send_to_socket)(layer, channel, message)
