"""Two hub server processes sharing Redis: an operator command reaches a device
wherever its socket lives, a device that moves to the other process leaves no
socket behind, and a fleet broadcast reaches every matching device exactly once.

The commands are sent from this test process, which is neither hub: the path is
the one the admin, the API and the Celery workers use (devices.publish through
the Redis channel layer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.db import connection
from django.db.models import Q

from deployments.models import Deployment
from devices import publish, services
from devices.models import Device
from firmware.models import Firmware, FirmwareStatus
from tests.devices.conftest import Credentials, run
from tests.support.hub import HubLauncher
from tests.support.nhl_client import DEFAULT_FW, NHLDevice

pytestmark = pytest.mark.services


async def in_thread(function: Any, *args: Any) -> Any:
    # The services are sync code that sends through async_to_sync: not from the
    # event loop that runs the device clients. The worker thread's database
    # connection is closed after each call so the test database can be dropped.
    def call() -> Any:
        try:
            return function(*args)
        finally:
            connection.close()

    return await asyncio.to_thread(call)


async def no_more(device: NHLDevice, event: str, wait: float = 1.0) -> None:
    try:
        extra = await device.next_event(event, timeout=wait)
    except TimeoutError:
        return
    raise AssertionError(f"{device.identifier} got a second {event}: {extra}")


def test_it_reaches_a_device_on_the_other_process(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: one device on each process
    hub_a, hub_b = live_hub(), live_hub()
    on_a = creds.device(hub_a.ws_url, "dev-on-a")
    on_b = creds.device(hub_b.ws_url, "dev-on-b")
    admin = creds.tenant.admin

    async def scenario() -> tuple[list[Any], list[Any]]:
        await on_a.connect()
        await on_b.connect()
        # when: the operator asks each device for something
        row_a = await in_thread(Device.objects.get, Q(identifier="dev-on-a"))
        row_b = await in_thread(Device.objects.get, Q(identifier="dev-on-b"))
        await in_thread(services.identify_device, admin, row_a)
        await in_thread(services.reboot_device, admin, row_b)
        identify = await on_a.next_event("identify")
        reboot = await on_b.next_event("reboot")
        # then: each reaches its device only
        await no_more(on_b, "identify", wait=0.5)
        await no_more(on_a, "reboot", wait=0.5)
        await on_a.heartbeat()
        await on_b.heartbeat()
        await on_a.close()
        await on_b.close()
        return identify, reboot

    identify, reboot = run(scenario())
    assert identify == [None, None, "device", "identify", {}]
    assert reboot == [None, None, "device", "reboot", {}]
    on_a.assert_no_violations()
    on_b.assert_no_violations()


def test_it_follows_a_device_that_moves_to_the_other_process(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: the device connected to A, then connects again to B
    hub_a, hub_b = live_hub(), live_hub()
    first = creds.device(hub_a.ws_url, "dev-moves")
    second = creds.device(hub_b.ws_url, "dev-moves")
    admin = creds.tenant.admin

    async def scenario() -> list[Any]:
        await first.connect()
        await second.connect()
        # then: last connection wins across processes
        await first.wait_closed()
        # when: the operator asks for it, the command goes to B's socket
        row = await in_thread(Device.objects.get, Q(identifier="dev-moves"))
        await in_thread(services.identify_device, admin, row)
        identify = await second.next_event("identify")
        await second.heartbeat()
        await second.close()
        return identify

    identify = run(scenario())
    assert identify[3] == "identify"
    assert first.ws is not None and first.ws.close_code == 1000
    first.assert_no_violations()
    second.assert_no_violations()


def test_it_broadcasts_to_a_deployment_once_per_device_across_processes(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: a deployment whose firmware the devices already run (nothing to
    # update), devices of it on both processes, and one device it does not match
    tenant = creds.tenant
    firmware = Firmware.objects.create(
        org=tenant.org,
        product=tenant.product,
        uuid=DEFAULT_FW["nerves_fw_uuid"],
        version=DEFAULT_FW["nerves_fw_version"],
        platform=DEFAULT_FW["nerves_fw_platform"],
        architecture=DEFAULT_FW["nerves_fw_architecture"],
        status=FirmwareStatus.VALID,
    )
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=firmware, is_active=True
    )
    hub_a, hub_b = live_hub(), live_hub()
    members = [creds.device(hub.ws_url, f"dev-fleet-{i}") for i, hub in enumerate([hub_a, hub_b, hub_a, hub_b])]
    stranger = creds.device(
        hub_b.ws_url, "dev-stranger", firmware={**DEFAULT_FW, "nerves_fw_platform": "bbb", "nerves_fw_uuid": "other"}
    )

    async def scenario() -> list[list[Any]]:
        for device in [*members, stranger]:
            await device.connect()
        # when
        await in_thread(publish.broadcast_to_deployment, deployment.pk, "fleet_notice", {"n": 1})
        received = [await device.next_event("fleet_notice") for device in members]
        # then: once each, and not to the device of no deployment
        await asyncio.gather(*(no_more(device, "fleet_notice") for device in [*members, stranger]))
        for device in [*members, stranger]:
            await device.heartbeat()
            await device.close()
        return received

    received = run(scenario())
    assert received == [[None, None, "device", "fleet_notice", {"n": 1}]] * len(members)
    assert set(Device.objects.filter(identifier__startswith="dev-fleet-").values_list("deployment_id", flat=True)) == {
        deployment.pk
    }
    assert Device.objects.get(identifier="dev-stranger").deployment_id is None
    for device in [*members, stranger]:
        device.assert_no_violations()


def test_a_socket_sends_a_repeated_update_push_once(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a device on one process, and pushes sent to its socket from this
    # one: the same update twice (a resend whose first copy was not lost after
    # all), then another
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-once")
    layer = get_channel_layer()

    async def scenario() -> list[Any]:
        await device.connect()
        channel = await in_thread(
            lambda: Device.objects.filter(identifier="dev-once").values_list("socket_channel", flat=True).get()
        )
        # when
        for once, version in (("update:7", "2.0.0"), ("update:7", "2.0.0"), ("update:8", "2.1.0")):
            message = publish.push_message("update", {"firmware_meta": {"version": version}}, once=once)
            await publish.send_to_socket(layer, channel, message)
        first = await device.next_event("update")
        second = await device.next_event("update")
        await no_more(device, "update", wait=1.0)
        await device.close()
        return [first, second]

    pushes = run(scenario())
    # then: one of each; the key itself never reaches the device
    assert [p[4] for p in pushes] == [{"firmware_meta": {"version": "2.0.0"}}, {"firmware_meta": {"version": "2.1.0"}}]
    device.assert_no_violations()
