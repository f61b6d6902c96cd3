"""Rollout outcomes and the breaker (docs/rollout.md): the breaker counts
devices, not attempts; an attempt the hub cut short is offered again, not
failed; a device still downloading resumes; the headline counts the devices
the rollout updated even after they left the deployment; an operator who
clears the penalty box or enables updates again resets the failure count and
has the update offered at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.utils import timezone
from django.utils.text import slugify
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks, Settings

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices import services as device_services
from devices.models import Device
from firmware.models import Firmware
from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiving_loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for every receive of a test: an in-memory channel's queue stays
    # bound to the loop that first waited on it.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _open_socket() -> str:
    return str(async_to_sync(get_channel_layer().new_channel)())


def _received(channel: str, loop: asyncio.AbstractEventLoop) -> list[str]:
    layer = get_channel_layer()

    async def drain() -> list[str]:
        events: list[str] = []
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(channel), 0.3)
            except TimeoutError:
                return events
            events.append(f"{message['topic']}/{message['event']}")

    return loop.run_until_complete(drain())


def _claim(deployment: Deployment, device: Device) -> DeviceUpdate:
    """Run the orchestrator; the device's update is then requested (this run
    or an earlier one claimed it)."""
    rollout.run_rollout(deployment.pk)
    return DeviceUpdate.objects.get(device=device, status=UpdateStatus.REQUESTED)


def _report(device: Device, status: str) -> None:
    rollout.on_status_report(device.pk, {"status": status, "reason": "simulated"})


def _fail(deployment: Deployment, device: Device) -> None:
    _claim(deployment, device)
    _report(device, "received")
    _report(device, "failed")


def _succeed(deployment: Deployment, device: Device, target_uuid: str | None) -> None:
    _claim(deployment, device)
    _report(device, "received")
    # it reboots onto the new firmware: a new connection
    Device.objects.filter(pk=device.pk).update(socket_channel=_open_socket(), disconnected_at=timezone.now())
    _rejoin(device, uuid=target_uuid)


def _rejoin(device: Device, *, uuid: str | None = None, downloading: str | None = None) -> None:
    """The socket's join, as devices.services.store_join runs it."""
    if uuid is not None:
        Device.objects.filter(pk=device.pk).update(firmware_uuid=uuid)
    seen = Device.objects.get(pk=device.pk)
    join = DeviceJoin.model_validate({"nerves_fw_uuid": seen.firmware_uuid, "currently_downloading_uuid": downloading})
    rollout.on_device_joined(device.pk, join_report(join), seen=seen)


def _hub_restart(device: Device) -> str:
    """The hub process holding the device's socket dies (its close is never
    recorded); the device connects to another process: a new socket."""
    channel = _open_socket()
    Device.objects.filter(pk=device.pk).update(socket_channel=channel)
    return channel


# --- 4. The breaker counts devices, and not the hub's own restarts ------------------------


def test_the_breaker_counts_a_device_failing_four_times_once_and_not_the_hub_restarts(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    # given: the defaults (20 % of at least 10), five devices
    deployment.concurrent_updates = 5
    deployment.penalty_attempts = 100  # keep the failing device trying
    deployment.penalty_rate_attempts = 100
    deployment.save()
    devices = [
        make_device(tenant.product, f"d{i}", deployment=deployment, socket_channel=_open_socket()) for i in range(5)
    ]
    failing, others = devices[0], devices[1:]
    # when: one device fails four times
    for _ in range(4):
        _fail(deployment, failing)
    # and two hub restarts cut two other devices' downloads short: they come
    # back on a new socket, without the update
    for device in others[:2]:
        _claim(deployment, device)
        _report(device, "received")
        _report(device, "started")
        _hub_restart(device)
        _rejoin(device)
    # then: no failure recorded for them, and their update was offered again
    restarted = DeviceUpdate.objects.filter(device__in=others[:2])
    assert sorted(restarted.values_list("status", flat=True)) == [UpdateStatus.REQUESTED] * 2
    # when: all four others succeed
    for device in others:
        _succeed(deployment, device, target.uuid)
    # then: 1 failed device of 5 that finished, fewer than 10: the rollout goes on
    deployment.refresh_from_db()
    assert deployment.paused_at is None, deployment.paused_reason
    assert DeviceUpdate.objects.filter(status=UpdateStatus.SUCCEEDED).count() == 4
    assert DeviceUpdate.objects.filter(status=UpdateStatus.EXPIRED).count() == 0


def test_the_breaker_judges_failed_devices_over_devices_that_finished(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    # given: 10 devices; one failed three times and then succeeded, two failed once
    deployment.concurrent_updates = 10
    deployment.penalty_attempts = 100
    deployment.penalty_rate_attempts = 100
    deployment.breaker_failure_percent = 30
    deployment.breaker_min_attempts = 10
    deployment.save()
    devices = [make_device(tenant.product, f"d{i}", deployment=deployment) for i in range(10)]
    for _ in range(3):
        _fail(deployment, devices[0])
    _succeed(deployment, devices[0], target.uuid)
    for device in devices[1:3]:
        _fail(deployment, device)
    for device in devices[3:9]:
        _succeed(deployment, device, target.uuid)
    # when: the tenth fails (3 failed devices of 10 that finished = 30 %)
    assert rollout.check_breaker(deployment.pk) is False
    _fail(deployment, devices[9])
    # then
    deployment.refresh_from_db()
    assert deployment.paused_at is not None
    assert "3 of 10 devices that finished their update failed, 0 in flight" in deployment.paused_reason


def test_a_device_whose_socket_close_the_hub_saw_and_that_returns_without_the_update_failed(
    tenant: Tenant, deployment: Deployment
) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel=_open_socket())
    _claim(deployment, device)
    _report(device, "received")
    # when: the hub recorded its socket's close (the device went away), and it
    # returns on its old firmware, not downloading
    Device.objects.filter(pk=device.pk).update(disconnected_at=timezone.now(), socket_channel=_open_socket())
    _rejoin(device)
    # then
    update = DeviceUpdate.objects.get(device=device)
    assert update.status == UpdateStatus.EXPIRED and "rejoined without the update" in update.reason


def test_an_attempt_cut_short_by_the_hub_is_offered_again_on_the_new_socket(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: the device acknowledged and was downloading
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel=_open_socket())
    with django_capture_on_commit_callbacks(execute=True):
        update = _claim(deployment, device)
    _report(device, "received")
    rollout.on_status_report(device.pk, {"value": 40, "stage": "downloading"})
    # when: its hub process dies; the device comes back elsewhere without it
    socket = _hub_restart(device)
    with django_capture_on_commit_callbacks(execute=True):
        _rejoin(device)
    # then: the same attempt, requested again and pushed to the new socket
    update.refresh_from_db()
    assert update.status == UpdateStatus.REQUESTED and "interrupted" in update.reason
    assert update.finished_at is None
    assert _received(socket, receiving_loop) == ["device/update"]
    device.refresh_from_db()
    assert device.penalty_box_until is None


def test_an_attempt_whose_hub_process_died_and_was_closed_out_is_offered_again(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: the device acknowledged its update on a process that then died,
    # and a live process recorded it offline when that process's lease expired
    from devices.models import HubLease

    lease = HubLease.objects.create(channel="specific.doomed", expires_at=timezone.now() + timedelta(seconds=60))
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel=_open_socket())
    Device.objects.filter(pk=device.pk).update(hub_lease=lease)
    with django_capture_on_commit_callbacks(execute=True):
        update = _claim(deployment, device)
    _report(device, "received")
    HubLease.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert device_services.close_out_expired_leases(None) == [device.pk]
    # when: the device comes back, without the update, on a new socket
    Device.objects.filter(pk=device.pk).update(socket_channel=(socket := _open_socket()))
    with django_capture_on_commit_callbacks(execute=True):
        _rejoin(device)
    # then: the hub never saw the socket close, so the attempt was cut short by
    # the hub: offered again, not a failure
    update.refresh_from_db()
    assert update.status == UpdateStatus.REQUESTED, (update.status, update.reason)
    assert _received(socket, receiving_loop)[-1:] == ["device/update"]


def test_a_device_still_downloading_resumes_and_is_not_pushed_again(
    tenant: Tenant,
    deployment: Deployment,
    target: Firmware,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: claimed and pushed; its `received` was lost with the hub process
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel=_open_socket())
    with django_capture_on_commit_callbacks(execute=True):
        update = _claim(deployment, device)
    # when: it reconnects elsewhere saying it is downloading the target
    socket = _hub_restart(device)
    with django_capture_on_commit_callbacks(execute=True):
        _rejoin(device, downloading=target.uuid)
    # then: the attempt resumes, acknowledged, without a second push
    update.refresh_from_db()
    assert update.status == UpdateStatus.RECEIVED and update.attempted_at is not None
    assert _received(socket, receiving_loop) == []


def test_a_topic_rejoin_on_the_same_socket_changes_nothing(tenant: Tenant, deployment: Deployment) -> None:
    # given: the device is downloading on the socket the update was pushed to
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel=_open_socket())
    update = _claim(deployment, device)
    DeviceUpdate.objects.filter(pk=update.pk).update(pushed_channel=device.socket_channel)
    _report(device, "received")
    # when: the hub's side of the topic crashed and the device rejoins with the
    # params it had at connect (currently_downloading_uuid null)
    _rejoin(device)
    # then
    update.refresh_from_db()
    assert update.status == UpdateStatus.RECEIVED


def test_a_push_never_acknowledged_is_not_a_failure_when_it_times_out(tenant: Tenant, deployment: Deployment) -> None:
    # given: a device claimed whose push never reached it
    deployment.penalty_attempts = 1
    deployment.save()
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _claim(deployment, device)
    DeviceUpdate.objects.filter(pk=update.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    # when
    run = rollout.run_rollout(deployment.pk)
    # then: interrupted, not penalty-boxed, and offered again at once
    update.refresh_from_db()
    assert update.status == UpdateStatus.INTERRUPTED
    device.refresh_from_db()
    assert device.penalty_box_until is None
    assert run.claimed == [device.pk]


# --- 5. The headline counts the devices it updated ----------------------------------------


def test_the_headline_counts_devices_that_left_the_deployment_by_updating(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    # given: the usual condition; four devices updated and left it
    deployment.conditions_version = "< 1.1.0"
    deployment.concurrent_updates = 10
    deployment.save()
    devices = [make_device(tenant.product, f"d{i}", deployment=deployment) for i in range(4)]
    for device in devices:
        _claim(deployment, device)
        _report(device, "received")
    # when
    for device in devices:
        Device.objects.filter(pk=device.pk).update(firmware_version=target.version)
        _rejoin(device, uuid=target.uuid)
    # then
    assert Device.objects.filter(deployment=deployment).count() == 0
    counts = rollout.progress(deployment)
    assert counts["succeeded"] == 4
    assert (counts["on_target"], counts["members"]) == (4, 4)
    # the org's rollout page and the API say the same
    client = Client()
    client.force_login(tenant.viewer)
    page = client.get(f"/org/{slugify(tenant.org.name)}/deployments/{deployment.pk}/").content.decode()
    assert '<span id="rollout-on-target">4</span> of <span id="rollout-members">4</span>' in page
    assert '<span id="rollout-percent">100</span>%' in page
    token = tenancy.create_api_token("test", tenant.viewer, "tests").clear
    status = client.get(
        f"/api/v1/orgs/{tenant.org.name}/products/{tenant.product.name}/deployments/{deployment.name}/status",
        HTTP_AUTHORIZATION=f"token {token}",
    ).json()
    assert (status["counts"]["on_target"], status["counts"]["members"]) == (4, 4)


# --- 3. Clearing the penalty box clears it --------------------------------------------------


def _boxed_after_three_failures(tenant: Tenant, deployment: Deployment) -> Device:
    deployment.penalty_rate_attempts = 100
    deployment.save()
    device = make_device(tenant.product, "d1", deployment=deployment, socket_channel=_open_socket())
    for _ in range(3):
        _fail(deployment, device)
    device.refresh_from_db()
    assert device.penalty_box_until is not None
    return device


@pytest.mark.parametrize("relief", ["clear_penalty_box", "enable_updates", "retry_failed"])
def test_clearing_the_penalty_box_resets_the_failure_count(tenant: Tenant, deployment: Deployment, relief: str) -> None:
    # given
    device = _boxed_after_three_failures(tenant, deployment)
    one = Device.objects.filter(pk=device.pk)
    # when
    if relief == "clear_penalty_box":
        assert device_services.clear_penalty_box("operator", one) == 1
    elif relief == "retry_failed":
        assert rollout.retry_failed("operator", deployment) == 1
    else:
        device_services.set_updates_enabled("operator", one, False)
        device_services.set_updates_enabled("operator", one, True)
    _fail(deployment, device)
    # then: one failure after the relief does not box it again
    device.refresh_from_db()
    assert device.penalty_box_until is None
    assert DeviceUpdate.objects.filter(device=device, status=UpdateStatus.FAILED).count() == 4


@pytest.mark.parametrize("relief", ["clear_penalty_box", "enable_updates"])
def test_clearing_the_penalty_box_offers_the_update_at_once(
    tenant: Tenant,
    deployment: Deployment,
    relief: str,
    settings: Settings,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a connected device in the penalty box
    device = _boxed_after_three_failures(tenant, deployment)
    one = Device.objects.filter(pk=device.pk)
    if relief == "enable_updates":
        device_services.set_updates_enabled("operator", one, False)
    _received(device.socket_channel, receiving_loop)
    # when: the orchestrator runs the wake-ups in this process
    settings.CELERY_TASK_ALWAYS_EAGER = True
    from nerveshub.celery import app

    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            if relief == "clear_penalty_box":
                device_services.clear_penalty_box("operator", one)
            else:
                device_services.set_updates_enabled("operator", one, True)
    finally:
        app.conf.task_always_eager = settings.EMBEDDED
    # then: pushed now, not at the next backstop run
    assert DeviceUpdate.objects.filter(device=device, status=UpdateStatus.REQUESTED).exists()
    assert _received(device.socket_channel, receiving_loop) == ["device/update"]
