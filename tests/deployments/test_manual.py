"""Manual updates (deployments.manual.send_update): one chosen firmware pushed
to one device now, settled like any attempt, outside every deployment's slot
count, breaker and penalty box."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments import manual, rollout
from deployments.manual import UpdateRefused, send_update
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from deployments.tasks import run_all_rollouts
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices import services as device_services
from devices.models import Device
from firmware.models import Firmware, FirmwareKind, FirmwareStatus
from firmware.services import download_url
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.devices.conftest import wait_until
from tests.support.hub import HubLauncher
from tests.support.nhl_client import DEFAULT_FW, NHLDevice


def _open_socket() -> str:
    return str(async_to_sync(get_channel_layer().new_channel)())


@pytest.fixture
def receiving_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _received(channel: str, loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    layer = get_channel_layer()

    async def drain() -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), 0.3))
            except TimeoutError:
                return messages

    return loop.run_until_complete(drain())


@pytest.mark.django_db
def test_it_pushes_the_chosen_firmware_once_and_audits_it(
    tenant: Tenant,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a connected device whose updates are disabled (an operator's push ignores that)
    firmware = make_firmware(tenant.product, "2.0.0")
    device = make_device(tenant.product, "d1", socket_channel=_open_socket(), updates_enabled=False)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        update = send_update(tenant.manager, device, firmware)
    # then
    pushed = _received(device.socket_channel, receiving_loop)
    assert [(m["event"], m["payload"]["firmware_meta"]["uuid"]) for m in pushed] == [("update", firmware.uuid)]
    assert pushed[0]["payload"]["deployment_id"] is None
    update.refresh_from_db()
    assert (update.deployment_id, update.status, update.pushes, update.push_sent) == (
        None,
        UpdateStatus.REQUESTED,
        1,
        True,
    )
    event = AuditEvent.objects.get(action="update.requested")
    assert event.details["firmware"] == firmware.uuid and event.details["deployment"] is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("other product", "belongs to another product"),
        ("other org", "belongs to another product"),
        ("not valid", "is not validated"),
        ("archive", "is an archive"),
        ("deleted", "is deleted"),
        ("offline", "a manual update is not queued"),
        ("in flight", "already has an update in flight"),
    ],
)
def test_it_refuses_with_a_reason_and_writes_nothing(
    tenant: Tenant, other_tenant: Tenant, case: str, expected: str
) -> None:
    # given
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    firmware = make_firmware(tenant.product, "2.0.0")
    if case == "other product":
        other, _ = tenant.product.org.products.get_or_create(name="other")
        firmware = make_firmware(other, "2.0.0")
    elif case == "other org":
        firmware = make_firmware(other_tenant.product, "2.0.0")
    elif case == "not valid":
        Firmware.objects.filter(pk=firmware.pk).update(status=FirmwareStatus.PENDING)
        firmware.refresh_from_db()
    elif case == "archive":
        Firmware.objects.filter(pk=firmware.pk).update(kind=FirmwareKind.ARCHIVE)
        firmware.refresh_from_db()
    elif case == "deleted":
        device_services.soft_delete("test", Device.objects.filter(pk=device.pk))
        device.refresh_from_db()
    elif case == "offline":
        device = make_device(tenant.product, "d2", online=False)
    elif case == "in flight":
        DeviceUpdate.objects.create(device=device, firmware=make_firmware(tenant.product, "1.5.0"))
    before = DeviceUpdate.objects.count()
    # when / then
    with pytest.raises(UpdateRefused, match=expected):
        send_update(tenant.manager, device, firmware)
    assert DeviceUpdate.objects.count() == before
    assert not AuditEvent.objects.filter(action="update.requested").exists()


@pytest.mark.django_db
def test_a_manual_update_takes_no_deployment_slot_and_keeps_the_orchestrator_off_its_device(
    tenant: Tenant, deployment: Deployment, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given: one slot; two eligible members, one of them being updated by hand
    Deployment.objects.filter(pk=deployment.pk).update(concurrent_updates=1)
    manual_device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    other = make_device(tenant.product, "d2", socket_channel=_open_socket())
    for device in (manual_device, other):
        rollout.assign_deployment(device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        send_update(tenant.manager, manual_device, make_firmware(tenant.product, "1.5.0"))
    # when
    with django_capture_on_commit_callbacks(execute=True):
        run = rollout.run_rollout(deployment.pk)
    # then: the slot went to the other device; the manual update stands
    assert run.claimed == [other.pk]
    mine = DeviceUpdate.objects.get(device=manual_device)
    assert (mine.deployment_id, mine.firmware.version, mine.status) == (None, "1.5.0", UpdateStatus.REQUESTED)


@pytest.mark.django_db
def test_a_failed_manual_update_neither_boxes_the_device_nor_trips_a_breaker(
    tenant: Tenant, deployment: Deployment, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given: the strictest breaker and penalty box
    Deployment.objects.filter(pk=deployment.pk).update(breaker_min_attempts=1, penalty_attempts=1)
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    rollout.assign_deployment(device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        update = send_update(tenant.manager, device, make_firmware(tenant.product, "1.5.0"))
    # when: the device takes it and fails
    with django_capture_on_commit_callbacks(execute=True):
        rollout.on_status_report(device.pk, {"status": "received"})
        rollout.on_status_report(device.pk, {"status": "failed", "reason": "fwup error"})
    # then
    update.refresh_from_db()
    device.refresh_from_db()
    deployment.refresh_from_db()
    assert update.status == UpdateStatus.FAILED
    assert device.penalty_box_until is None
    assert deployment.paused_at is None
    assert AuditEvent.objects.filter(action="update.failed").count() == 1


@pytest.mark.django_db
def test_a_device_back_on_a_new_socket_is_sent_its_unacknowledged_manual_update(
    tenant: Tenant,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: the push went to a socket that closed before the device read it
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    with django_capture_on_commit_callbacks(execute=True):
        send_update(tenant.manager, device, make_firmware(tenant.product, "2.0.0"))
    socket = _open_socket()
    Device.objects.filter(pk=device.pk).update(socket_channel=socket)
    # when: it joins on its new socket
    seen = Device.objects.get(pk=device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        rollout.on_device_joined(
            device.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": seen.firmware_uuid})), seen=seen
        )
    # then
    assert [m["event"] for m in _received(socket, receiving_loop)] == ["update"]
    assert DeviceUpdate.objects.get(device=device).pushes == 2


@pytest.mark.django_db
def test_the_periodic_sweep_ends_a_stale_manual_update(tenant: Tenant) -> None:
    # given: one never acknowledged, one acknowledged, both silent too long, and a fresh one
    late = timezone.now() - manual.MANUAL_INFLIGHT_TIMEOUT - timedelta(minutes=1)
    firmware = make_firmware(tenant.product, "2.0.0")
    lost, silent, fresh = (make_device(tenant.product, name) for name in ("lost", "silent", "fresh"))
    DeviceUpdate.objects.create(device=lost, firmware=firmware)
    DeviceUpdate.objects.create(device=silent, firmware=firmware, status=UpdateStatus.DOWNLOADING)
    DeviceUpdate.objects.create(device=fresh, firmware=firmware)
    DeviceUpdate.objects.exclude(device=fresh).update(updated_at=late)
    # when
    run_all_rollouts()
    # then
    statuses = dict(DeviceUpdate.objects.values_list("device__identifier", "status"))
    assert statuses == {
        "lost": UpdateStatus.INTERRUPTED,
        "silent": UpdateStatus.EXPIRED,
        "fresh": UpdateStatus.REQUESTED,
    }


# The test's push reaches the hub's sockets only through a shared channel layer (Redis).
@pytest.mark.services
def test_a_device_receives_the_manual_update_and_settles_it(live_hub: HubLauncher, tenant: Tenant) -> None:
    # given: a connected nerves_hub_link-shaped device and a valid firmware
    target = make_firmware(tenant.product, "2.0.0", architecture=DEFAULT_FW["nerves_fw_architecture"])
    _, issued = device_services.create_product_secret("test", tenant.product)
    device_services.create_device("test", tenant.product, "manual-1")
    hub = live_hub({"ROLLOUT_BACKSTOP_SECONDS": "600"})
    client = NHLDevice(url=hub.ws_url, identifier="manual-1", key=issued.key, secret=issued.secret)

    async def scenario() -> list[Any]:
        await client.connect(timeout=30)
        row = await database_sync_to_async(Device.objects.select_related("hub_lease").get)(identifier="manual-1")
        # when: an operator pushes it
        await database_sync_to_async(send_update)(tenant.manager, row, target)
        pushed = await client.next_event("update", timeout=30)
        # the device downloads, applies and reboots onto it
        await client.push("device", "status_update", {"status": "received"})
        await client.push("device", "fwup_progress", {"value": 50, "stage": "downloading"})
        await client.push("device", "status_update", {"status": "completed"})
        await client.close()
        client.firmware = {**DEFAULT_FW, "nerves_fw_uuid": target.uuid or "", "nerves_fw_version": "2.0.0"}
        await client.connect(timeout=30)
        await client.heartbeat()
        await client.close()
        return pushed

    pushed = asyncio.run(scenario())
    # then
    payload = pushed[4]
    assert payload["firmware_meta"]["uuid"] == target.uuid
    # The path carries a signed expiry, so two URLs made a second apart differ
    # there; the file they name is the same.
    sent, fresh = urlsplit(payload["firmware_url"]).path, urlsplit(download_url(target)).path
    assert sent.rsplit("/", 1)[1] == fresh.rsplit("/", 1)[1] == f"{target.uuid}.fw"
    wait_until(lambda: DeviceUpdate.objects.get(device__identifier="manual-1").status == UpdateStatus.SUCCEEDED, 10)
    client.assert_no_violations()
