"""Disconnects are recorded in bursts, and a socket that was replaced never
marks its device offline."""

from __future__ import annotations

import asyncio

import pytest

from devices import services
from devices.models import ConnectionStatus, Device
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher
from webhooks.models import WebhookDelivery, WebhookEndpoint


@pytest.mark.django_db
def test_a_burst_of_disconnects_spares_the_devices_that_already_reconnected(creds: Credentials) -> None:
    devices = [services.create_device("test", creds.tenant.product, f"dev-{i}") for i in range(5)]
    for device in devices:
        services.open_device_connection(device, f"chan-{device.pk}")
    # dev-0 reconnected elsewhere before its old socket's close was recorded
    services.open_device_connection(Device.objects.get(pk=devices[0].pk), "chan-newer")
    WebhookEndpoint.objects.create(
        org=creds.tenant.org, url="https://hooks.example.com/x", event_types=["device.offline"]
    )

    gone = services.close_device_connections([(d.pk, f"chan-{d.pk}") for d in devices])

    assert sorted(gone) == sorted(d.pk for d in devices[1:])
    online = Device.objects.get(pk=devices[0].pk)
    assert (online.connection_status, online.socket_channel) == (ConnectionStatus.CONNECTED, "chan-newer")
    assert set(Device.objects.filter(pk__in=gone).values_list("connection_status", flat=True)) == {
        ConnectionStatus.DISCONNECTED
    }
    offline_events = WebhookDelivery.objects.filter(event_type="device.offline")
    assert sorted(int(d.payload["data"]["subject"]["id"]) for d in offline_events) == sorted(gone)


@pytest.mark.services
def test_devices_that_drop_together_are_all_marked_offline(live_hub: HubLauncher, creds: Credentials) -> None:
    hub = live_hub()
    fleet = [creds.device(hub.ws_url, f"drop-{i}") for i in range(30)]

    async def scenario() -> None:
        for device in fleet:
            await device.connect()
        await asyncio.gather(*(device.close() for device in fleet))

    run(scenario())

    wait_until(
        lambda: (
            Device.objects.filter(identifier__startswith="drop-", connection_status=ConnectionStatus.DISCONNECTED)
            .exclude(socket_channel__gt="")
            .count()
            == 30
        )
    )
    for device in fleet:
        device.assert_no_violations()
