"""Soak: an update succeeds only after its device ran the new firmware,
validated, for the deployment's soak time; a return on the old firmware during
the soak is a failure the breaker counts; a soaking device holds no slot."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from deployments.tasks import run_all_rollouts
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices.models import ConnectionStatus, Device
from firmware.models import Firmware
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware


def _join(device: Device, *, uuid: str | None, validated: bool | None = None, reverted: bool = False) -> None:
    uuid = uuid or ""
    Device.objects.filter(pk=device.pk).update(firmware_uuid=uuid, firmware_auto_revert_detected=reverted)
    meta: dict[str, object] = {"firmware_auto_revert_detected": reverted}
    if validated is not None:
        meta["firmware_validated"] = validated
    rollout.on_device_joined(device.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": uuid, "meta": meta})))


def _installed(deployment: Deployment, device: Device) -> DeviceUpdate:
    """Claim the device's update and move it to `completed` (rebooting)."""
    rollout.run_rollout(deployment.pk)
    update = DeviceUpdate.objects.get(device=device, deployment=deployment)
    DeviceUpdate.objects.filter(pk=update.pk).update(status=UpdateStatus.COMPLETED, attempted_at=timezone.now())
    return update


def _age_soak(update: DeviceUpdate) -> None:
    DeviceUpdate.objects.filter(pk=update.pk).update(soak_until=timezone.now() - timedelta(seconds=1))


@pytest.fixture
def soaked(deployment: Deployment) -> Deployment:
    Deployment.objects.filter(pk=deployment.pk).update(soak_minutes=30, concurrent_updates=1)
    deployment.refresh_from_db()
    return deployment


@pytest.mark.django_db
def test_it_soaks_before_success_and_frees_the_slot(tenant: Tenant, soaked: Deployment, target: Firmware) -> None:
    # given
    first = make_device(tenant.product, "d1", deployment=soaked)
    second = make_device(tenant.product, "d2", deployment=soaked)
    rollout.run_rollout(soaked.pk)
    update = DeviceUpdate.objects.get(deployment=soaked)
    DeviceUpdate.objects.filter(pk=update.pk).update(status=UpdateStatus.COMPLETED, attempted_at=timezone.now())
    device = Device.objects.get(pk=update.device_id)
    # when: back on the new firmware
    _join(device, uuid=target.uuid)
    # then: soaking, not succeeded, and its slot went to the other device
    update.refresh_from_db()
    assert update.status == UpdateStatus.SOAKING and update.finished_at is None
    assert update.soak_until is not None and update.soak_until > timezone.now() + timedelta(minutes=29)
    other = second if device.pk == first.pk else first
    rollout.run_rollout(soaked.pk)
    assert DeviceUpdate.objects.filter(device=other).inflight().exists()


@pytest.mark.django_db
def test_it_succeeds_when_the_soak_time_is_up_at_the_sweep(
    tenant: Tenant, soaked: Deployment, target: Firmware
) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=soaked)
    update = _installed(soaked, device)
    _join(device, uuid=target.uuid)
    # when: not due yet, then due
    run_all_rollouts()
    update.refresh_from_db()
    early = update.status
    _age_soak(update)
    run_all_rollouts()
    # then
    update.refresh_from_db()
    assert early == UpdateStatus.SOAKING
    assert update.status == UpdateStatus.SUCCEEDED and update.finished_at is not None


@pytest.mark.django_db
def test_it_waits_for_an_absent_device_and_ends_the_soak_on_its_return(
    tenant: Tenant, soaked: Deployment, target: Firmware
) -> None:
    # given: soak time up while the device is away
    device = make_device(tenant.product, "d1", deployment=soaked)
    update = _installed(soaked, device)
    _join(device, uuid=target.uuid)
    _age_soak(update)
    Device.objects.filter(pk=device.pk).update(connection_status=ConnectionStatus.DISCONNECTED)
    # when
    run_all_rollouts()
    update.refresh_from_db()
    away = update.status
    _join(device, uuid=target.uuid)
    # then
    update.refresh_from_db()
    assert away == UpdateStatus.SOAKING
    assert update.status == UpdateStatus.SUCCEEDED


@pytest.mark.django_db
def test_a_disconnect_on_the_same_firmware_keeps_soaking(tenant: Tenant, soaked: Deployment, target: Firmware) -> None:
    device = make_device(tenant.product, "d1", deployment=soaked)
    update = _installed(soaked, device)
    _join(device, uuid=target.uuid)
    _join(device, uuid=target.uuid)
    update.refresh_from_db()
    assert update.status == UpdateStatus.SOAKING


@pytest.mark.parametrize("how", ["old firmware", "auto-revert flag"])
@pytest.mark.django_db
def test_a_revert_during_the_soak_fails_and_trips_the_breaker(
    tenant: Tenant, soaked: Deployment, target: Firmware, how: str
) -> None:
    # given: a breaker that trips at the first failed device
    Deployment.objects.filter(pk=soaked.pk).update(breaker_min_attempts=1, breaker_failure_percent=50)
    device = make_device(tenant.product, "d1", deployment=soaked)
    update = _installed(soaked, device)
    _join(device, uuid=target.uuid)
    # when
    if how == "old firmware":
        _join(device, uuid="uuid-1.0.0")
    else:
        _join(device, uuid=target.uuid, reverted=True)
    # then
    update.refresh_from_db()
    soaked.refresh_from_db()
    assert update.status == UpdateStatus.FAILED and "soak" in update.reason
    assert soaked.paused_at is not None


@pytest.mark.django_db
def test_validation_starts_the_soak(tenant: Tenant, soaked: Deployment, target: Firmware) -> None:
    device = make_device(tenant.product, "d1", deployment=soaked)
    update = _installed(soaked, device)
    _join(device, uuid=target.uuid, validated=False)
    update.refresh_from_db()
    waiting = update.status
    rollout.on_firmware_validated(device.pk)
    update.refresh_from_db()
    assert waiting == UpdateStatus.COMPLETED
    assert update.status == UpdateStatus.SOAKING and update.booted_at is not None


@pytest.mark.django_db
def test_no_soak_keeps_the_old_rule(tenant: Tenant, deployment: Deployment, target: Firmware) -> None:
    device = make_device(tenant.product, "d1", deployment=deployment)
    update = _installed(deployment, device)
    _join(device, uuid=target.uuid)
    update.refresh_from_db()
    assert update.status == UpdateStatus.SUCCEEDED


@pytest.mark.django_db
def test_the_claim_records_the_previous_firmware(tenant: Tenant, deployment: Deployment) -> None:
    old = make_firmware(tenant.product, "1.0.0")
    device = make_device(tenant.product, "d1", deployment=deployment, firmware_uuid=old.uuid)
    rollout.run_rollout(deployment.pk)
    assert DeviceUpdate.objects.get(device=device).from_firmware_id == old.pk


@pytest.mark.django_db
def test_a_soaking_device_counts_as_in_flight_for_the_breaker(
    tenant: Tenant, soaked: Deployment, target: Firmware
) -> None:
    # given: one device soaking, one failed: 1 failed of 1 finished + 1 soaking
    Deployment.objects.filter(pk=soaked.pk).update(
        breaker_min_attempts=1, breaker_failure_percent=60, concurrent_updates=2
    )
    soaking, failing = (
        make_device(tenant.product, "d1", deployment=soaked),
        make_device(tenant.product, "d2", deployment=soaked),
    )
    rollout.run_rollout(soaked.pk)
    DeviceUpdate.objects.filter(device=soaking).update(status=UpdateStatus.COMPLETED, attempted_at=timezone.now())
    _join(soaking, uuid=target.uuid)
    # when
    rollout.on_status_report(failing.pk, {"status": "failed", "reason": "boom"})
    # then: 1 of 2 is 50 %, under the 60 % threshold: not paused
    soaked.refresh_from_db()
    assert soaked.paused_at is None


@pytest.mark.django_db
def test_a_stage_waits_for_its_members_soak(tenant: Tenant, soaked: Deployment, target: Firmware) -> None:
    from deployments.models import DeploymentStage

    # given: a one-device canary stage, then the rest
    DeploymentStage.objects.create(deployment=soaked, position=0, name="canary", size_count=1)
    DeploymentStage.objects.create(deployment=soaked, position=1, name="rest", size_percent=100)
    for i in range(3):
        make_device(tenant.product, f"d{i}", deployment=soaked)
    rollout.run_rollout(soaked.pk)
    canary = DeviceUpdate.objects.get(deployment=soaked)
    DeviceUpdate.objects.filter(pk=canary.pk).update(status=UpdateStatus.COMPLETED, attempted_at=timezone.now())
    _join(Device.objects.get(pk=canary.device_id), uuid=target.uuid)
    # when: it soaks, then its soak ends
    rollout.run_rollout(soaked.pk)
    during = DeviceUpdate.objects.filter(deployment=soaked).count()
    _age_soak(canary)
    rollout.run_rollout(soaked.pk)
    rollout.run_rollout(soaked.pk)
    # then
    assert during == 1
    assert DeviceUpdate.objects.filter(deployment=soaked).count() == 2
