"""What a device's join and status reports make of its in-flight update: success
only on the new firmware (and once validated, when the device reports validation),
failures that feed the penalty box, and slots that are kept or freed."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices.models import Device
from firmware.models import Firmware
from tests.conftest import Tenant
from tests.deployments.conftest import make_device


def _join(device: Device, *, uuid: str | None, validated: bool | None = None, **fields: object) -> None:
    """Store what the join reports about the firmware, then run the rollout's
    part, as the device consumer does."""
    Device.objects.filter(pk=device.pk).update(firmware_uuid=uuid)
    meta = {"firmware_validated": validated} if validated is not None else {}
    rollout.on_device_joined(
        device.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": uuid, "meta": meta, **fields}))
    )


def _inflight_update(deployment: Deployment, device: Device, status: UpdateStatus) -> DeviceUpdate:
    rollout.run_rollout(deployment.pk)
    update = DeviceUpdate.objects.filter(device=device).latest("pk")
    DeviceUpdate.objects.filter(pk=update.pk).update(status=status, attempted_at=timezone.now())
    update.refresh_from_db()
    return update


@pytest.mark.django_db
def test_it_succeeds_when_the_device_comes_back_on_the_target(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _inflight_update(deployment, device, UpdateStatus.COMPLETED)
    # when
    _join(device, uuid=target.uuid)
    # then
    update.refresh_from_db()
    assert update.status == UpdateStatus.SUCCEEDED and update.finished_at is not None


@pytest.mark.django_db
def test_it_waits_for_validation_when_the_device_reports_it(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _inflight_update(deployment, device, UpdateStatus.UPDATING)
    # when: back on the new firmware, not yet validated
    _join(device, uuid=target.uuid, validated=False)
    update.refresh_from_db()
    waiting = update.status
    # when: the device validates it
    rollout.on_firmware_validated(device.pk)
    # then
    update.refresh_from_db()
    assert waiting == UpdateStatus.COMPLETED
    assert update.status == UpdateStatus.SUCCEEDED


@pytest.mark.django_db
def test_it_keeps_the_slot_of_a_device_still_downloading_the_target(
    tenant: Tenant, deployment: Deployment, target: Firmware
) -> None:
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _inflight_update(deployment, device, UpdateStatus.DOWNLOADING)
    _join(device, uuid="uuid-1.0.0", currently_downloading_uuid=target.uuid)
    update.refresh_from_db()
    assert update.status == UpdateStatus.DOWNLOADING


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "join", "expected", "reason"),
    [
        (UpdateStatus.COMPLETED, {}, UpdateStatus.EXPIRED, "old firmware after completing"),
        (UpdateStatus.UPDATING, {}, UpdateStatus.EXPIRED, "rejoined without the update"),
        (
            UpdateStatus.COMPLETED,
            {"meta": {"firmware_auto_revert_detected": True}},
            UpdateStatus.FAILED,
            "auto-reverted",
        ),
        (UpdateStatus.DOWNLOADING, {"currently_downloading_uuid": "some-other-uuid"}, UpdateStatus.EXPIRED, ""),
    ],
)
def test_it_counts_a_return_on_the_old_firmware_as_a_failed_attempt(
    tenant: Tenant,
    deployment: Deployment,
    status: UpdateStatus,
    join: dict[str, Any],
    expected: UpdateStatus,
    reason: str,
) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _inflight_update(deployment, device, status)
    # when: the hub saw its socket close, and it came back on its old firmware
    Device.objects.filter(pk=device.pk).update(firmware_uuid="uuid-1.0.0", disconnected_at=timezone.now())
    rollout.on_device_joined(
        device.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": "uuid-1.0.0", **join}))
    )
    # then
    update.refresh_from_db()
    assert update.status == expected
    assert reason in update.reason


@pytest.mark.django_db
def test_it_penalty_boxes_a_device_whose_updates_keep_reverting(tenant: Tenant, deployment: Deployment) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment)
    deployment.penalty_rate_attempts = 100  # only the total-attempts rule (3)
    deployment.save()
    for _ in range(3):
        _inflight_update(deployment, device, UpdateStatus.COMPLETED)
        # when: it comes back auto-reverted each time
        _join(device, uuid="uuid-1.0.0", meta={"firmware_auto_revert_detected": True})
    # then
    device.refresh_from_db()
    assert DeviceUpdate.objects.filter(device=device, status=UpdateStatus.FAILED).count() == 3
    assert device.penalty_box_until is not None and device.penalty_box_until > timezone.now()
    assert rollout.run_rollout(deployment.pk).claimed == []


@pytest.mark.django_db
def test_it_holds_a_rescheduled_device_until_its_delay_has_passed(tenant: Tenant, deployment: Deployment) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment)
    _inflight_update(deployment, device, UpdateStatus.RECEIVED)
    # when
    rollout.on_status_report(device.pk, {"status": "rescheduled", "delay_for": 10})
    # then
    update = DeviceUpdate.objects.get(device=device)
    assert update.status == UpdateStatus.RESCHEDULED
    assert update.retry_after is not None
    assert 9 * 60 < (update.retry_after - timezone.now()).total_seconds() <= 10 * 60
    assert rollout.run_rollout(deployment.pk).claimed == []
    # when: the delay has passed
    DeviceUpdate.objects.filter(pk=update.pk).update(retry_after=timezone.now())
    # then: the backstop's run pushes it again
    assert rollout.run_rollout(deployment.pk).claimed == [device.pk]


@pytest.mark.django_db
def test_it_frees_the_slot_when_a_device_reports_failure(tenant: Tenant, deployment: Deployment) -> None:
    # given: every slot but one taken, and d0 in flight
    devices = [make_device(tenant.product, f"d{i}", deployment=deployment) for i in range(4)]
    rollout.run_rollout(deployment.pk)
    first = DeviceUpdate.objects.get(device=devices[0])
    # when
    rollout.on_status_report(devices[0].pk, {"status": "failed", "reason": "fwup error: bad signature"})
    run = rollout.run_rollout(deployment.pk)
    # then
    first.refresh_from_db()
    assert first.status == UpdateStatus.FAILED and "bad signature" in first.reason
    assert run.claimed == [devices[3].pk]


@pytest.mark.django_db
@pytest.mark.parametrize("claimed", ["succeeded", "expired", "interrupted", "requested"])
def test_a_device_cannot_report_an_outcome_only_the_hub_decides(
    tenant: Tenant, deployment: Deployment, target: Firmware, claimed: str
) -> None:
    # given: a device downloading its update
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _inflight_update(deployment, device, UpdateStatus.DOWNLOADING)
    # when: it claims an outcome the hub decides (success comes only from a join
    # on the target firmware)
    rollout.on_status_report(device.pk, {"status": claimed})
    # then: nothing changed, and the slot stays taken
    update.refresh_from_db()
    assert update.status == UpdateStatus.DOWNLOADING and update.finished_at is None


@pytest.mark.django_db
def test_a_reschedule_with_an_absurd_delay_is_dropped_not_a_crash(tenant: Tenant, deployment: Deployment) -> None:
    # given
    from pydantic import ValidationError

    from devicelink.protocol import StatusUpdate

    # when / then: the socket's schema refuses it before the rollout sees it
    with pytest.raises(ValidationError):
        StatusUpdate.model_validate({"status": "rescheduled", "delay_for": 10**30})
    assert StatusUpdate.model_validate({"status": "rescheduled", "delay_for": 60}).delay_for == 60


def test_a_join_with_odd_meta_values_is_read_as_not_reported() -> None:
    # a device whose meta holds other types still joins (its rejoin would repeat
    # the same params every 5 s for ever)
    join = DeviceJoin.model_validate({"meta": {"firmware_validated": {"x": 1}, "firmware_auto_revert_detected": "yes"}})
    assert (join.meta.firmware_validated, join.meta.firmware_auto_revert_detected) == (None, False)
