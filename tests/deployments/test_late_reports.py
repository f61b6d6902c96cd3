"""A device's last report on its previous socket can be recorded after its new
socket's join (that socket, on a live hub process, drains its frames in turn):
the join does not push the attempt again meanwhile, so the late report
decides it, one push per claim, and a rollout its breaker paused keeps no
attempt in flight (docs/rollout.md, "Rollout outcomes and the breaker")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments import rollout
from deployments.models import INFLIGHT_STATUSES, Deployment, DeviceUpdate, UpdateStatus
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices.models import Device, HubLease
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiving_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _process(live: bool) -> str:
    """A hub process's dispatcher channel, with a live or an expired lease."""
    channel = str(async_to_sync(get_channel_layer().new_channel)())
    expires = timezone.now() + timedelta(seconds=60 if live else -1)
    HubLease.objects.create(channel=channel, expires_at=expires)
    return channel


def _received(address: str, loop: asyncio.AbstractEventLoop) -> list[str]:
    """What reached the device socket at `address` (its process's channel)."""
    layer = get_channel_layer()
    channel = address.partition("#")[0]

    async def drain() -> list[str]:
        events: list[str] = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.3)
            except TimeoutError:
                return events
            inner = message.get("message", message)
            events.append(f"{inner.get('topic')}/{inner.get('event')}")

    return loop.run_until_complete(drain())


def _rejoin(device: Device) -> None:
    seen = Device.objects.get(pk=device.pk)
    join = DeviceJoin.model_validate({"nerves_fw_uuid": seen.firmware_uuid})
    rollout.on_device_joined(device.pk, join_report(join), seen=seen)


def _acknowledged_on(deployment: Deployment, device: Device, address: str) -> DeviceUpdate:
    Device.objects.filter(pk=device.pk).update(socket_channel=address)
    rollout.run_rollout(deployment.pk)
    update = DeviceUpdate.objects.get(device=device, status=UpdateStatus.REQUESTED)
    DeviceUpdate.objects.filter(pk=update.pk).update(pushes=1, pushed_channel=address, push_sent=True)
    rollout.on_status_report(device.pk, {"status": "received"})
    rollout.on_status_report(device.pk, {"status": "started"})
    return update


@pytest.fixture
def deployment(deployment: Deployment) -> Deployment:
    deployment.penalty_attempts = 1
    deployment.save()
    return deployment


def test_a_failure_reported_on_the_previous_socket_after_the_join_decides_the_attempt(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a device acknowledged its update on a socket of a hub process
    device = make_device(tenant.product, "d1", deployment=deployment)
    process = _process(live=True)
    update = _acknowledged_on(deployment, device, f"{process}#1")
    # when: it reboots after failing and rejoins on a new socket of that
    # process, before its old socket recorded the `failed` it sent there
    new = f"{process}#2"
    Device.objects.filter(pk=device.pk).update(socket_channel=new)
    with django_capture_on_commit_callbacks(execute=True):
        _rejoin(device)
    # then: offered again later, not pushed at once to the new socket
    assert _received(new, receiving_loop) == []
    # when: the old socket records the `failed`
    with django_capture_on_commit_callbacks(execute=True):
        rollout.on_status_report(device.pk, {"status": "failed", "reason": "fwup error"})
    # then: the attempt failed, the device is penalty-boxed, and a backstop
    # period later nothing is sent again
    update.refresh_from_db()
    assert update.status == UpdateStatus.FAILED and update.pushes == 1
    device.refresh_from_db()
    assert device.penalty_box_until is not None
    later = timezone.now() + timedelta(seconds=rollout.resend_after_seconds() + 1)
    with mock.patch("django.utils.timezone.now", return_value=later):
        with django_capture_on_commit_callbacks(execute=True):
            run = rollout.run_rollout(deployment.pk)
    assert run.resent == [] and run.claimed == []
    assert _received(new, receiving_loop) == []


def test_a_rollout_paused_by_its_breaker_keeps_no_attempt_in_flight_after_a_late_failure(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given: the device acknowledged on a live process, then the breaker paused
    # the deployment (another device's failure)
    device = make_device(tenant.product, "d1", deployment=deployment)
    process = _process(live=True)
    update = _acknowledged_on(deployment, device, f"{process}#1")
    rollout.pause("orchestrator", deployment, "breaker")
    # when: the device rejoins, then its old socket's `failed` lands
    Device.objects.filter(pk=device.pk).update(socket_channel=f"{process}#2")
    with django_capture_on_commit_callbacks(execute=True):
        _rejoin(device)
        rollout.on_status_report(device.pk, {"status": "failed", "reason": "fwup error"})
    # then: nothing of the deployment is in flight
    update.refresh_from_db()
    assert update.status == UpdateStatus.FAILED
    assert not DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES).exists()


def test_an_attempt_acknowledged_on_another_process_is_pushed_again_at_once(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: acknowledged on a socket whose process's lease expired (it died)
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _acknowledged_on(deployment, device, f"{_process(live=False)}#1")
    # when: the device comes back on a live process
    new = f"{_process(live=True)}#3"
    Device.objects.filter(pk=device.pk).update(socket_channel=new)
    with django_capture_on_commit_callbacks(execute=True):
        _rejoin(device)
    # then: that process may have died with the download: offered again at once
    update.refresh_from_db()
    assert update.status == UpdateStatus.REQUESTED and update.pushes == 2
    assert _received(new, receiving_loop) == ["device/update"]
