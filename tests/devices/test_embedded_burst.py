"""Embedded mode (SQLite, no settings) holds a burst of first-time devices: every
join succeeds, nothing waits out SQLite's lock and fails, and devices that close
right after their join leave nothing at error level in the hub's log."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from devices.models import ConnectionStatus, Device
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher

BURST = 50


@pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), reason="the embedded database is SQLite"
)
def test_fifty_first_time_joins_at_once_all_succeed_on_sqlite(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: an embedded hub (SQLite, in-memory layer) with no connect limits in the way
    hub = live_hub({"REDIS_URL": "", "DEVICE_CONNECT_RATE": "0"})
    fleet = [creds.device(hub.ws_url, f"burst-{i:02d}") for i in range(BURST)]

    async def scenario() -> list[str]:
        # when: fifty devices the hub has never seen connect and join at once
        replies = await asyncio.gather(*(device.connect(timeout=60) for device in fleet))
        # and close right after their join
        await asyncio.gather(*(device.close() for device in fleet))
        return [reply[4]["status"] for reply in replies]

    statuses = run(scenario())

    # then: every join was answered ok and every device was registered once
    assert statuses == ["ok"] * BURST, statuses
    assert Device.objects.filter(identifier__startswith="burst-").count() == BURST
    wait_until(
        lambda: (
            Device.objects.filter(identifier__startswith="burst-", connection_status=ConnectionStatus.DISCONNECTED)
            .exclude(socket_channel__gt="")
            .count()
            == BURST
        ),
        timeout=30,
    )
    log = hub.log()
    assert "database is locked" not in log
    assert "could not record" not in log
    # an ordinary disconnect logs nothing at error level
    assert " ERROR " not in log and "Traceback" not in log, log[-5000:]
    for device in fleet:
        device.assert_no_violations()


@pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), reason="the embedded database is SQLite"
)
def test_concurrent_page_writes_on_sqlite_never_fail_with_a_locked_database(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: an embedded hub, a signed-in manager and twenty devices
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from devices import services
    from nerveshub.web.access import org_slug

    targets = [services.create_device("test", creds.tenant.product, f"page-{i:02d}") for i in range(20)]
    hub = live_hub({"REDIS_URL": ""})
    session = requests.Session()
    login = hub.http_url + "/accounts/login/"
    session.get(login, timeout=30)
    signed_in = session.post(
        login,
        data={"username": "alice", "password": "pw-alice", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": login},
        timeout=30,
        allow_redirects=False,
    )
    assert signed_in.status_code == 302, signed_in.text[:500]
    slug = org_slug(creds.tenant.org)

    def tag(device_pk: int) -> int:
        url = f"{hub.http_url}/org/{slug}/devices/{device_pk}/action/"
        response = session.post(
            url,
            data={
                "action": "set_tags",
                "tags": f"t{device_pk}, burst",
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": url},
            timeout=60,
            allow_redirects=False,
        )
        return response.status_code

    # when: every device's tags are saved at once
    with ThreadPoolExecutor(len(targets)) as pool:
        statuses = list(pool.map(tag, [d.pk for d in targets]))

    # then: every write was done, none failed on SQLite's lock
    assert statuses == [302] * len(targets), statuses
    for device in Device.objects.filter(pk__in=[d.pk for d in targets]):
        assert sorted(device.tags) == sorted(["burst", f"t{device.pk}"])
    assert "database is locked" not in hub.log()
