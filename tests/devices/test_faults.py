"""Faults a production hub lives through: the database goes away for a while.
What devices see, and that the hub recovers by itself."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.conf import settings

from devices.auth import REASON_PLATFORM
from devices.models import Device
from tests.devices.conftest import run, wait_until
from tests.devices.test_device_auth import _upgrade
from tests.support.nhl_client import nh1_headers
from tests.support.tcp_cut import TcpCut


@pytest.fixture
def db_cut():
    db = settings.DATABASES["default"]
    cut = TcpCut(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
    yield cut
    cut.close()


def _url_through(cut: TcpCut) -> str:
    db = settings.DATABASES["default"]
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@127.0.0.1:{cut.port}/{db['NAME']}"


@pytest.mark.services
def test_it_keeps_devices_connected_through_a_database_outage_and_recovers(live_hub, creds, db_cut):
    # given: a hub whose database connections go through a forwarder we can cut
    hub = live_hub({"DATABASE_URL": _url_through(db_cut), "DATABASE_CONN_MAX_AGE": "600"})
    connected = creds.device(hub.ws_url, "dev-steady", rejoin_after=0.5)

    async def scenario():
        await connected.connect()
        # when: the database disappears
        db_cut.interrupt()
        heartbeat = await connected.heartbeat()
        refused = await _upgrade(
            hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "dev-during", int(time.time()))
        )
        # a device report during the outage crashes the topic (phx_error), not the socket
        await connected.push("device", "report_network_interface", {"interface": "wlan0"})
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
