"""A real device on a real hub process: its connection and disconnection reach
a real receiver, signed, once each."""

from __future__ import annotations

import asyncio

from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher
from tests.webhooks.conftest import Receiver, Subscribe
from webhooks import services
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery

# The receiver listens on 127.0.0.1, which the operator must allow.
LOCAL_RECEIVERS = {"WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}


def test_a_device_socket_announces_online_and_offline(
    live_hub: HubLauncher, creds: Credentials, subscribe: Subscribe, receiver: Receiver
) -> None:
    # given
    subscribe(EventType.DEVICE_ONLINE, EventType.DEVICE_OFFLINE)
    hub = live_hub(LOCAL_RECEIVERS)
    device = creds.device(hub.ws_url, "dev-hooked")

    async def scenario() -> None:
        await device.connect()
        await device.heartbeat()
        await asyncio.sleep(0.2)
        await device.close()

    # when
    run(scenario())
    wait_until(lambda: WebhookDelivery.objects.count() == 2, timeout=10)
    # The hub sends them itself in embedded mode; with Redis there is no worker
    # in the test run, so send what is still pending (a claimed row is skipped).
    for delivery_id in WebhookDelivery.objects.values_list("pk", flat=True):
        services.deliver(delivery_id)
    got = receiver.wait_for(2)

    # then
    assert sorted(r.payload["type"] for r in got) == ["device.offline", "device.online"]
    assert all(r.verified for r in got)
    assert {r.payload["data"]["subject"]["name"] for r in got} == {"dev-hooked"}
    wait_until(lambda: set(WebhookDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SUCCEEDED})
    assert len(receiver.received) == 2
