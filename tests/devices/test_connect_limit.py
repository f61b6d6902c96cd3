"""The per-process connect limiter sheds a reconnect herd before any database
work, and lets devices back in as the bucket refills."""

from __future__ import annotations

import asyncio
import time

import pytest

from devices.models import Device
from tests.devices.conftest import Credentials, run
from tests.devices.test_device_auth import _upgrade
from tests.support.hub import HubLauncher
from tests.support.nhl_client import nh1_headers


def test_it_sheds_connects_over_the_rate_with_503_and_lets_them_in_later(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: 5 connects per second, a burst of 5
    hub = live_hub({"DEVICE_CONNECT_RATE": "5", "DEVICE_CONNECT_BURST": "5"})
    now = int(time.time())

    async def herd() -> list[tuple[int, dict[str, str]]]:
        attempts = [
            _upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, f"herd-{i}", now))
            for i in range(20)
        ]
        return await asyncio.gather(*attempts)

    # when
    first = run(herd())
    time.sleep(1.5)
    later = run(_upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "late", int(time.time()))))
    # then
    statuses = [status for status, _ in first]
    assert statuses.count(101) <= 6 and statuses.count(503) >= 14, statuses
    shed = next(headers for status, headers in first if status == 503)
    assert "retry later" in shed["nh-connection-error-reason"]
    # shed devices never reached authentication: no auto-registration happened
    assert Device.objects.filter(identifier__startswith="herd-").count() == statuses.count(101)
    assert later[0] == 101


# The backlog is the queue of the device sockets' database thread pool, which only
# PostgreSQL has (devicelink/dbthreads.py); SQLite keeps one thread and no queue to shed on.
@pytest.mark.services
def test_it_sheds_connects_while_the_database_backlog_is_deep(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: two database threads, connects refused while a call waits for one
    hub = live_hub({"DEVICE_DB_THREADS": "2", "DEVICE_CONNECT_BACKLOG": "1", "DEVICE_CONNECT_RATE": "0"})
    now = int(time.time())

    async def burst() -> list[tuple[int, dict[str, str]]]:
        attempts = [
            _upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, f"burst-{i}", now))
            for i in range(40)
        ]
        return await asyncio.gather(*attempts)

    # when
    statuses = [status for status, _ in run(burst())]
    time.sleep(1)
    later = run(_upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "late", int(time.time()))))
    # then: some were shed, before authentication; the backlog drained
    assert statuses.count(503) >= 1 and statuses.count(101) >= 1, statuses
    assert statuses.count(503) + statuses.count(101) == 40, statuses
    assert Device.objects.filter(identifier__startswith="burst-").count() == statuses.count(101)
    assert later[0] == 101


def test_it_sheds_connects_while_too_many_are_under_way(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: one database thread, at most two connects or joins under way, the
    # other limits off
    hub = live_hub(
        {
            "DEVICE_DB_THREADS": "1",
            "DEVICE_CONNECT_CONCURRENCY": "2",
            "DEVICE_CONNECT_BACKLOG": "0",
            "DEVICE_CONNECT_RATE": "0",
        }
    )
    now = int(time.time())

    async def burst() -> list[tuple[int, dict[str, str]]]:
        attempts = [
            _upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, f"many-{i}", now))
            for i in range(40)
        ]
        return await asyncio.gather(*attempts)

    # when
    results = run(burst())
    time.sleep(1)
    later = run(_upgrade(hub.ws_url, nh1_headers(creds.product_key, creds.product_secret, "late", int(time.time()))))
    # then: most were shed, before authentication, and said why; the count
    # came back down as the admitted ones were answered
    statuses = [status for status, _ in results]
    assert statuses.count(503) >= 10 and statuses.count(101) >= 1, statuses
    assert statuses.count(503) + statuses.count(101) == 40, statuses
    shed = next(headers for status, headers in results if status == 503)
    assert "retry later" in shed["nh-connection-error-reason"]
    assert Device.objects.filter(identifier__startswith="many-").count() == statuses.count(101)
    assert later[0] == 101
