"""Embedded mode (no Redis, no Celery beat): deliveries go through a bounded
pool, and a hub killed with deliveries pending sends them once it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from pytest_django.fixtures import Settings

from nerveshub.tenancy.services import audit
from tests.conftest import Tenant
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher
from tests.webhooks.conftest import Receiver, Subscribe
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery

# An embedded hub process (REDIS_URL empty), whichever database the run uses,
# with short periods so the test need not wait for the defaults.
EMBEDDED_HUB = {
    "REDIS_URL": "",
    "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "WEBHOOK_RETRY_BASE_SECONDS": "5",
    "WEBHOOK_SWEEP_SECONDS": "5",
}


@pytest.mark.skipif(not django_settings.CELERY_TASK_ALWAYS_EAGER, reason="embedded mode only")
@pytest.mark.django_db(transaction=True)
def test_a_burst_of_deliveries_to_a_slow_receiver_is_sent_a_few_at_a_time(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver, settings: Settings
) -> None:
    # given: a receiver that takes half a second per request, and 24 events
    settings.WEBHOOK_DELIVERY_CONCURRENCY = 3
    receiver.delay = 0.5
    subscribe(EventType.FIRMWARE_VALIDATED)
    threads_before = threading.active_count()

    # when: they commit together
    with transaction.atomic():
        for _ in range(24):
            audit("system", "firmware.validated", tenant.product)
    threads_during = threading.active_count()

    # then: all sent, never more than three at once, without a thread each
    receiver.wait_for(24, timeout=120)
    wait_until(
        lambda: set(WebhookDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SUCCEEDED},
        timeout=30,
    )
    assert receiver.max_in_flight <= 3
    assert threads_during - threads_before <= 3


@pytest.mark.slow
def test_a_retry_pending_when_the_hub_is_killed_is_sent_by_the_restarted_hub(
    live_hub: HubLauncher, creds: Credentials, subscribe: Subscribe, receiver: Receiver
) -> None:
    # given: a device's online event whose first attempt failed, its retry due
    # in 5 s, when the hub process is killed
    subscribe(EventType.DEVICE_ONLINE)
    receiver.fail_first = 1
    hub = live_hub(EMBEDDED_HUB)
    device = creds.device(hub.ws_url, "dev-killed")

    async def connect() -> None:
        await device.connect()
        await asyncio.sleep(0.2)

    run(connect())
    wait_until(lambda: WebhookDelivery.objects.filter(last_status=503).exists(), timeout=30)
    os.kill(hub.process.pid, signal.SIGKILL)
    hub.process.wait(10)
    assert [r.answered for r in receiver.received] == [503]

    # when: the hub comes back, and no device connects to it
    live_hub(EMBEDDED_HUB)

    # then: its beat's sweep sends the retry
    receiver.wait_for(1, timeout=90)
    wait_until(lambda: WebhookDelivery.objects.get().status == DeliveryStatus.SUCCEEDED, timeout=30)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (2, 204, "")
    assert [r.answered for r in receiver.received] == [503, 204]
