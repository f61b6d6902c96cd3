"""The `update` push reaches each device socket once, whichever paths decide to
send it: the orchestrator's claim, a join that finds the update unacknowledged,
and the resend of a push that was lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices.models import Device
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

pytestmark = pytest.mark.django_db


def _open_socket() -> str:
    return str(async_to_sync(get_channel_layer().new_channel)())


@pytest.fixture
def receiving_loop() -> Iterator[asyncio.AbstractEventLoop]:
    # One loop for every receive of a test: an in-memory channel's queue stays
    # bound to the loop that first waited on it.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _received(channel: str, loop: asyncio.AbstractEventLoop) -> list[str]:
    """The events waiting on a socket's channel."""
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


def _join(device: Device) -> None:
    # What the socket's join runs once the device's row says this socket serves it.
    seen = Device.objects.get(pk=device.pk)
    rollout.on_device_joined(
        device.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": seen.firmware_uuid})), seen=seen
    )


def _reconnect(device: Device) -> str:
    channel = _open_socket()
    Device.objects.filter(pk=device.pk).update(socket_channel=channel)
    return channel


def test_a_device_claimed_between_its_connect_and_its_join_is_sent_the_update_once(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a device whose socket is registered but has not joined yet
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    socket = device.socket_channel
    rollout.assign_deployment(device.pk)
    # when: the orchestrator claims it, then its join finds the update unacknowledged
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.run_rollout(deployment.pk).claimed == [device.pk]
    with django_capture_on_commit_callbacks(execute=True):
        _join(device)
    # then
    assert _received(socket, receiving_loop) == ["device/update"]
    update = DeviceUpdate.objects.get(device=device)
    assert (update.status, update.pushes, update.pushed_channel) == (UpdateStatus.REQUESTED, 1, socket)


def test_a_device_back_on_a_new_socket_is_sent_its_unacknowledged_update_once(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: the push went to a socket that closed before the device read it
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    rollout.assign_deployment(device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        rollout.run_rollout(deployment.pk)
    # when: the device comes back and its socket joins twice (a rejoin after a
    # crashed join sends the same join again)
    socket = _reconnect(device)
    with django_capture_on_commit_callbacks(execute=True):
        _join(device)
        _join(device)
    # then: one push on the new socket
    assert _received(socket, receiving_loop) == ["device/update"]
    assert DeviceUpdate.objects.get(device=device).pushes == 2


def test_a_resend_loses_to_a_join_that_pushed_after_the_resend_decided(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a push lost long ago; the orchestrator decides to resend it
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    rollout.assign_deployment(device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        rollout.run_rollout(deployment.pk)
    DeviceUpdate.objects.filter(device=device).update(updated_at=timezone.now() - timedelta(minutes=5))
    socket = _reconnect(device)
    decided = rollout._resend_unacknowledged(deployment, timezone.now())
    assert [device_id for _, device_id, _ in decided] == [device.pk]
    # when: the device's join pushes first, then the resend is sent
    with django_capture_on_commit_callbacks(execute=True):
        _join(device)
    with django_capture_on_commit_callbacks(execute=True):
        rollout.push_updates([(pk, pushes) for pk, _, pushes in decided], {"firmware_url": "x"})
    # then: the join's push only
    assert _received(socket, receiving_loop) == ["device/update"]
    assert DeviceUpdate.objects.get(device=device).pushes == 2


def test_a_lost_push_is_resent_to_the_same_socket_after_the_resend_delay(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a claim whose push never left (its worker died after the commit)
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    rollout.assign_deployment(device.pk)
    run = rollout.run_rollout(deployment.pk)  # on_commit callbacks not run: nothing sent
    assert run.claimed == [device.pk] and _received(device.socket_channel, receiving_loop) == []
    # when: a run within the delay, then one after it
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.run_rollout(deployment.pk).resent == []
    DeviceUpdate.objects.filter(device=device).update(
        updated_at=timezone.now() - timedelta(seconds=rollout.resend_after_seconds() + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.run_rollout(deployment.pk).resent == [device.pk]
    # then
    assert _received(device.socket_channel, receiving_loop) == ["device/update"]


def test_an_acknowledged_update_is_never_pushed_again(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    rollout.assign_deployment(device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        rollout.run_rollout(deployment.pk)
    assert _received(device.socket_channel, receiving_loop) == ["device/update"]
    rollout.on_status_report(device.pk, {"status": "received"})
    DeviceUpdate.objects.filter(device=device).update(updated_at=timezone.now() - timedelta(minutes=5))
    socket = _reconnect(device)
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.run_rollout(deployment.pk).resent == []
        rollout.push_pending_update(device.pk)
    assert _received(socket, receiving_loop) == []


def test_lost_pushes_holding_every_slot_are_resent(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a claim filled every slot and its worker died before sending
    devices = [make_device(tenant.product, f"d{i}", socket_channel=_open_socket()) for i in range(5)]
    for device in devices:
        rollout.assign_deployment(device.pk)
    claimed = rollout.run_rollout(deployment.pk).claimed
    assert len(claimed) == deployment.concurrent_updates
    DeviceUpdate.objects.update(updated_at=timezone.now() - timedelta(seconds=rollout.resend_after_seconds() + 1))
    # when
    with django_capture_on_commit_callbacks(execute=True):
        run = rollout.run_rollout(deployment.pk)
    # then: the held slots' pushes go out again; nothing new is claimed
    assert sorted(run.resent) == sorted(claimed) and run.claimed == [] and run.skipped == "no free slot"
    received = {d.pk: _received(d.socket_channel, receiving_loop) for d in devices}
    assert received == {d.pk: ["device/update"] if d.pk in claimed else [] for d in devices}


def test_a_push_decided_but_never_sent_is_resent_and_a_sent_one_is_not(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: two claimed devices; one push was sent, the other's worker died
    # after deciding it (the push is recorded, nothing left)
    sent, lost = (make_device(tenant.product, name, socket_channel=_open_socket()) for name in ("sent", "lost"))
    for device in (sent, lost):
        rollout.assign_deployment(device.pk)
    run = rollout.run_rollout(deployment.pk)
    updates = {u.device_id: u for u in DeviceUpdate.objects.all()}
    assert sorted(run.claimed) == sorted([sent.pk, lost.pk])
    with django_capture_on_commit_callbacks(execute=True):
        rollout.push_updates([(updates[sent.pk].pk, 0)], {"firmware_url": "x"})
    assert rollout._mark_pushed(updates[lost.pk].pk, 0, lost.socket_channel)
    assert _received(sent.socket_channel, receiving_loop) == ["device/update"]
    # when: neither is acknowledged within the resend delay (a busy hub records
    # acknowledgements late)
    DeviceUpdate.objects.update(updated_at=timezone.now() - timedelta(seconds=rollout.resend_after_seconds() + 1))
    with django_capture_on_commit_callbacks(execute=True):
        resent = rollout.run_rollout(deployment.pk).resent
    # then: only the push that never left goes out again
    assert resent == [lost.pk]
    assert _received(lost.socket_channel, receiving_loop) == ["device/update"]
    assert _received(sent.socket_channel, receiving_loop) == []


def test_a_push_the_channel_layer_lost_is_resent_to_the_same_socket_after_its_expiry(
    tenant: Tenant,
    deployment: Deployment,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    receiving_loop: asyncio.AbstractEventLoop,
) -> None:
    # given: a push handed to the channel layer for the device's socket, which
    # the layer then lost (a Redis restart): nothing reached the device
    device = make_device(tenant.product, "d1", socket_channel=_open_socket())
    rollout.assign_deployment(device.pk)
    with django_capture_on_commit_callbacks(execute=True):
        rollout.run_rollout(deployment.pk)
    _received(device.socket_channel, receiving_loop)  # what the layer lost
    update = DeviceUpdate.objects.get(device=device)
    assert update.push_sent and update.pushed_channel == device.socket_channel

    def unacknowledged_for(seconds: int) -> None:
        DeviceUpdate.objects.filter(pk=update.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))

    # when: unacknowledged past the resend delay, but not past the layer's expiry
    unacknowledged_for(rollout.resend_after_seconds() + 1)
    assert rollout.resend_after_seconds() + 1 < rollout.lost_push_seconds()
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.run_rollout(deployment.pk).resent == []
    # then, when past the expiry: sent again, with the same once key
    unacknowledged_for(rollout.lost_push_seconds() + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert rollout.run_rollout(deployment.pk).resent == [device.pk]
    message = receiving_loop.run_until_complete(get_channel_layer().receive(device.socket_channel))
    assert (message["event"], message["once"]) == ("update", rollout.update_once_key(update.pk))
    assert DeviceUpdate.objects.get(pk=update.pk).pushes == 2
