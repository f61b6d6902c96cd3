"""Membership, eligibility, slot claiming, outcomes, penalty box and breaker."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployments import rollout
from deployments.models import INFLIGHT_STATUSES, Deployment, DeviceUpdate, UpdateStatus
from devices.models import Device, ValidationStatus
from firmware.models import Firmware
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware


def _inflight(deployment: Deployment) -> int:
    return DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES).count()


@pytest.mark.django_db
def test_it_assigns_the_best_matching_active_deployment(tenant: Tenant, deployment: Deployment) -> None:
    # given
    newer = Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="beta",
        firmware=make_firmware(tenant.product, "2.1.0"),
        conditions_tags=["beta"],
        is_active=True,
    )
    Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="inactive",
        firmware=make_firmware(tenant.product, "9.0.0"),
        is_active=False,
    )
    plain = make_device(tenant.product, "plain")
    tester = make_device(tenant.product, "tester", tags=["beta"])
    other_platform = make_device(tenant.product, "bbb", platform="bbb")
    # when / then
    assert rollout.assign_deployment(plain.pk) == deployment.pk
    assert rollout.assign_deployment(tester.pk) == newer.pk
    assert rollout.assign_deployment(other_platform.pk) is None
    assert AuditEvent.objects.filter(action="device.deployment_changed").count() == 2


@pytest.mark.django_db
def test_it_explains_why_a_device_does_not_match(tenant: Tenant, deployment: Deployment) -> None:
    deployment.conditions_tags = ["eu"]
    deployment.conditions_version = "~> 1.2"
    device = make_device(tenant.product, "d1", version="1.1.0", architecture="x86_64")
    problems = rollout.membership_problems(deployment, device)
    assert "missing tags: eu" in problems
    assert "version 1.1.0 does not match ~> 1.2" in problems
    assert any(p.startswith("architecture x86_64") for p in problems)


@pytest.mark.django_db
def test_it_never_claims_more_than_the_concurrency_limit(tenant: Tenant, deployment: Deployment) -> None:
    # given
    devices = [make_device(tenant.product, f"d{i}") for i in range(7)]
    for device in devices:
        rollout.assign_deployment(device.pk)
    # when
    first = rollout.run_rollout(deployment.pk)
    second = rollout.run_rollout(deployment.pk)
    # then
    assert len(first.claimed) == 3
    assert second.claimed == [] and second.skipped == "no free slot"
    assert _inflight(deployment) == 3
    assert AuditEvent.objects.filter(action="update.requested").count() == 3


@pytest.mark.django_db
def test_it_skips_devices_that_must_not_update(tenant: Tenant, deployment: Deployment, target: Firmware) -> None:
    # given
    now = timezone.now()
    cases: dict[str, dict[str, Any]] = {
        "offline": {"online": False},
        "disabled": {"updates_enabled": False},
        "boxed": {"penalty_box_until": now + timedelta(hours=1)},
        "current": {"firmware_uuid": target.uuid},
        "unvalidated": {"firmware_validation": ValidationStatus.NOT_VALIDATED},
    }
    for name, fields in cases.items():
        make_device(tenant.product, name, **fields)
    ok = make_device(tenant.product, "ok")
    Device.objects.update(deployment=deployment)
    # when
    run = rollout.run_rollout(deployment.pk)
    preview = {row.device.identifier: row for row in rollout.preview(deployment)}
    # then
    assert run.claimed == [ok.pk]
    assert preview["ok"].eligible is False  # now it has an update in flight
    assert "an update is in flight" in preview["ok"].problems
    assert "offline" in preview["offline"].problems
    assert "updates disabled" in preview["disabled"].problems
    assert any("penalty box" in p for p in preview["boxed"].problems)
    assert "already on the target firmware" in preview["current"].problems
    assert "current firmware not validated" in preview["unvalidated"].problems


@pytest.mark.django_db
def test_it_stops_pushing_when_deactivated_or_paused(tenant: Tenant, deployment: Deployment) -> None:
    make_device(tenant.product, "d1", deployment=deployment)
    rollout.pause("test", deployment)
    assert rollout.run_rollout(deployment.pk).skipped == "paused"
    rollout.resume("test", deployment)
    Deployment.objects.filter(pk=deployment.pk).update(is_active=False)
    assert rollout.run_rollout(deployment.pk).skipped == "inactive"
    assert _inflight(deployment) == 0


@pytest.mark.django_db
def test_it_expires_stale_updates_and_frees_their_slots(tenant: Tenant, deployment: Deployment) -> None:
    # given
    devices = [make_device(tenant.product, f"d{i}", deployment=deployment) for i in range(4)]
    rollout.run_rollout(deployment.pk)
    # the devices acknowledged their updates, then went quiet
    DeviceUpdate.objects.update(
        status=UpdateStatus.DOWNLOADING, attempted_at=timezone.now(), updated_at=timezone.now() - timedelta(hours=1)
    )
    # when
    run = rollout.run_rollout(deployment.pk)
    # then: the device that never tried goes first, then expired ones retry
    assert run.expired == 3
    assert run.claimed[0] == devices[3].pk and len(run.claimed) == 3
    assert DeviceUpdate.objects.filter(status=UpdateStatus.EXPIRED).count() == 3


@pytest.mark.django_db
def test_it_penalty_boxes_after_three_failures(tenant: Tenant, deployment: Deployment) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=deployment)
    deployment.penalty_rate_attempts = 100  # isolate the total-attempts rule
    deployment.save()
    for attempt in range(3):
        # when
        assert rollout.run_rollout(deployment.pk).claimed == [device.pk], attempt
        update = DeviceUpdate.objects.get(device=device, status__in=INFLIGHT_STATUSES)
        DeviceUpdate.objects.filter(pk=update.pk).update(status=UpdateStatus.FAILED, finished_at=timezone.now())
        rollout.attempt_finished(update.pk, wake_orchestrator=False)
    # then
    device.refresh_from_db()
    assert device.penalty_box_until is not None and device.penalty_box_until > timezone.now()
    assert rollout.run_rollout(deployment.pk).claimed == []
    assert AuditEvent.objects.filter(action="device.penalty_boxed").count() == 1


@pytest.mark.django_db
def test_it_trips_the_breaker_and_resumes_only_on_request(tenant: Tenant, deployment: Deployment) -> None:
    # given: 10 finished attempts, 2 failed = 20 %
    deployment.concurrent_updates = 100
    deployment.save()
    devices = [make_device(tenant.product, f"d{i}", deployment=deployment) for i in range(10)]
    rollout.run_rollout(deployment.pk)
    updates = list(DeviceUpdate.objects.filter(deployment=deployment).order_by("pk"))
    for i, update in enumerate(updates):
        status = UpdateStatus.FAILED if i < 2 else UpdateStatus.SUCCEEDED
        DeviceUpdate.objects.filter(pk=update.pk).update(status=status, finished_at=timezone.now())
    # when
    tripped = rollout.check_breaker(deployment.pk)
    # then
    deployment.refresh_from_db()
    assert tripped and deployment.paused_at is not None
    assert "2 of 10 devices that finished their update failed, 0 in flight" in deployment.paused_reason
    assert len(devices) == 10
    assert rollout.run_rollout(deployment.pk).skipped == "paused"
    rollout.resume("test", deployment)
    assert rollout.check_breaker(deployment.pk) is False  # judged afresh after resuming


@pytest.mark.django_db
def test_the_breaker_counts_attempts_still_in_flight(tenant: Tenant, deployment: Deployment) -> None:
    # given: 50 attempts claimed at once; failures finish first (a success
    # waits for the reboot), so 3 failed and 7 succeeded of the first 10
    # finished while 40 are still in flight
    deployment.concurrent_updates = 100
    deployment.breaker_failure_percent = 20
    deployment.breaker_min_attempts = 10
    deployment.save()
    for i in range(50):
        make_device(tenant.product, f"d{i}", deployment=deployment)
    rollout.run_rollout(deployment.pk)
    updates = list(DeviceUpdate.objects.filter(deployment=deployment).order_by("pk").values_list("pk", flat=True))

    def finish(pks: list[int], status: UpdateStatus) -> None:
        DeviceUpdate.objects.filter(pk__in=pks).update(status=status, finished_at=timezone.now())

    finish(updates[:3], UpdateStatus.FAILED)
    finish(updates[3:10], UpdateStatus.SUCCEEDED)
    # when / then: 30 % of the finished ones, 6 % of the attempts: no trip
    assert rollout.check_breaker(deployment.pk) is False
    # when: seven more fail, 10 of 50 attempts (20 %)
    finish(updates[10:17], UpdateStatus.FAILED)
    # then
    assert rollout.check_breaker(deployment.pk) is True
    deployment.refresh_from_db()
    assert "10 of 17 devices that finished their update failed, 33 in flight" in deployment.paused_reason


@pytest.mark.django_db
def test_it_counts_progress_by_status(tenant: Tenant, deployment: Deployment) -> None:
    for i in range(2):
        make_device(tenant.product, f"d{i}", deployment=deployment)
    rollout.run_rollout(deployment.pk)
    counts = rollout.progress(deployment)
    assert counts["requested"] == 2 and counts["members"] == 2 and counts["on_target"] == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.services
def test_it_holds_the_limit_with_two_workers_racing(tenant: Tenant, deployment: Deployment) -> None:
    """Two orchestrator runs at once (two Celery workers) claim under the
    deployment row lock: together they never exceed concurrent_updates."""
    # given
    for i in range(20):
        make_device(tenant.product, f"d{i}", deployment=deployment)
    barrier = threading.Barrier(4)
    results = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(len(rollout.run_rollout(deployment.pk).claimed))
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # then
    assert sum(results) == 3
    assert _inflight(deployment) == 3


operations = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.just(0)),
        st.tuples(st.just("finish"), st.integers(0, 30)),
        st.tuples(st.just("toggle"), st.integers(0, 11)),
        st.tuples(st.just("limit"), st.integers(1, 5)),
    ),
    max_size=25,
)


@pytest.mark.django_db
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_it_keeps_in_flight_updates_within_the_limit_whatever_happens(
    tenant: Tenant, ops: list[tuple[str, int]]
) -> None:
    # given: a fresh deployment and 12 devices per example
    firmware = make_firmware(tenant.product, "3.0.0")
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name=f"p{firmware.pk}", firmware=firmware, is_active=True
    )
    deployment.concurrent_updates = 2
    deployment.save()
    devices = [make_device(tenant.product, f"p{firmware.pk}-{i}", deployment=deployment) for i in range(12)]
    for op, arg in ops:
        before = _inflight(deployment)
        limit = Deployment.objects.get(pk=deployment.pk).concurrent_updates
        # when
        if op == "run":
            rollout.run_rollout(deployment.pk)
            # then: a run fills up to the limit and never past it (a lowered
            # limit drains as updates finish; nothing is cancelled)
            assert _inflight(deployment) <= max(limit, before)
        elif op == "finish":
            inflight = list(DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES))
            if inflight:
                update = inflight[arg % len(inflight)]
                status = UpdateStatus.FAILED if arg % 2 else UpdateStatus.SUCCEEDED
                DeviceUpdate.objects.filter(pk=update.pk).update(status=status, finished_at=timezone.now())
        elif op == "toggle":
            device = devices[arg]
            Device.objects.filter(pk=device.pk).update(updates_enabled=not device.updates_enabled)
        else:
            Deployment.objects.filter(pk=deployment.pk).update(concurrent_updates=arg)
        per_device = DeviceUpdate.objects.filter(deployment=deployment, status__in=INFLIGHT_STATUSES)
        assert per_device.values("device").distinct().count() == per_device.count()
