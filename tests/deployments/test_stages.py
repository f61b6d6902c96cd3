"""Staged rollouts: canary, waves, soak time, approval, stage tolerance."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import rollout
from deployments.models import INFLIGHT_STATUSES, Deployment, DeploymentStage, DeviceUpdate, StageMember, UpdateStatus
from devices.models import Device
from tests.conftest import Tenant


def _succeed_all_inflight(deployment: Deployment) -> int:
    updates = list(DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES))
    for update in updates:
        DeviceUpdate.objects.filter(pk=update.pk).update(status=UpdateStatus.SUCCEEDED, finished_at=timezone.now())
        Device.objects.filter(pk=update.device_id).update(firmware_uuid=deployment.firmware.uuid)
    return len(updates)


@pytest.fixture
def fleet(tenant: Tenant, deployment: Deployment) -> list[Device]:
    from tests.deployments.conftest import make_device

    deployment.concurrent_updates = 100
    deployment.save()
    return [make_device(tenant.product, f"d{i:02d}", deployment=deployment) for i in range(10)]


@pytest.mark.django_db
def test_it_rolls_out_canary_then_waves(deployment: Deployment, fleet: list[Device]) -> None:
    # given
    DeploymentStage.objects.create(deployment=deployment, position=1, name="canary", size_count=2)
    DeploymentStage.objects.create(deployment=deployment, position=2, name="half", size_percent=50)
    DeploymentStage.objects.create(deployment=deployment, position=3, name="all", size_percent=100)
    # when / then: the canary first
    assert len(rollout.run_rollout(deployment.pk).claimed) == 2
    assert rollout.run_rollout(deployment.pk).claimed == []
    assert _succeed_all_inflight(deployment) == 2
    # the half wave: 50 % of 10 = 5 in all, 3 more
    assert len(rollout.run_rollout(deployment.pk).claimed) == 3
    _succeed_all_inflight(deployment)
    assert len(rollout.run_rollout(deployment.pk).claimed) == 5
    _succeed_all_inflight(deployment)
    rollout.run_rollout(deployment.pk)
    assert DeploymentStage.objects.filter(completed_at__isnull=False).count() == 3
    assert Device.objects.filter(firmware_uuid=deployment.firmware.uuid).count() == 10


@pytest.mark.django_db
def test_it_keeps_stage_membership_once_claimed(deployment: Deployment, fleet: list[Device]) -> None:
    canary = DeploymentStage.objects.create(deployment=deployment, position=1, name="canary", size_count=3)
    rollout.run_rollout(deployment.pk)
    first = set(StageMember.objects.filter(stage=canary).values_list("device_id", flat=True))
    DeviceUpdate.objects.all().delete()  # even when the updates are gone
    rollout.run_rollout(deployment.pk)
    assert set(StageMember.objects.filter(stage=canary).values_list("device_id", flat=True)) == first
    assert len(first) == 3


@pytest.mark.django_db
def test_it_waits_for_soak_time_and_approval(deployment: Deployment, fleet: list[Device]) -> None:
    # given
    DeploymentStage.objects.create(deployment=deployment, position=1, name="canary", size_count=1)
    wave = DeploymentStage.objects.create(
        deployment=deployment, position=2, name="rest", size_percent=100, soak_minutes=30, requires_approval=True
    )
    rollout.run_rollout(deployment.pk)
    _succeed_all_inflight(deployment)
    # when / then
    assert rollout.run_rollout(deployment.pk).skipped.startswith("soaking before stage rest")
    DeploymentStage.objects.filter(position=1).update(completed_at=timezone.now() - timedelta(hours=1))
    assert rollout.run_rollout(deployment.pk).skipped == "stage rest waits for approval"
    assert rollout.approve_stage("user:alice", wave)
    assert len(rollout.run_rollout(deployment.pk).claimed) == 9


@pytest.mark.django_db
def test_it_pauses_when_a_stage_exceeds_its_failure_tolerance(deployment: Deployment, fleet: list[Device]) -> None:
    # given
    DeploymentStage.objects.create(deployment=deployment, position=1, name="canary", size_count=4, failure_percent=50)
    rollout.run_rollout(deployment.pk)
    updates = list(DeviceUpdate.objects.filter(deployment=deployment).order_by("pk"))
    for i, update in enumerate(updates):
        status = UpdateStatus.FAILED if i < 2 else UpdateStatus.SUCCEEDED
        DeviceUpdate.objects.filter(pk=update.pk).update(status=status, finished_at=timezone.now())
    # when
    tripped = rollout.check_breaker(deployment.pk)
    # then
    deployment.refresh_from_db()
    assert tripped
    assert deployment.paused_reason.startswith("stage canary: 2 of 4")
