"""The canary-versus-control gate: its statistics, its counters, and the pause
with both cohorts' figures when the updated devices do worse."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments import gate, rollout
from deployments.models import Deployment, DeviceUpdate, GateCounter, UpdateStatus
from devicelink.join import join_report, quiet_join
from devicelink.protocol import DeviceJoin
from devices.models import Device, HealthReport
from firmware.models import Firmware
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

# --- statistics ------------------------------------------------------------------------


def test_a_share_far_above_the_margin_is_significant() -> None:
    assert gate.proportion_excess_p(15, 40, 0, 100, 0.05) < 0.001


def test_equal_shares_are_not() -> None:
    assert gate.proportion_excess_p(5, 100, 5, 100, 0.05) > 0.5
    assert gate.proportion_excess_p(0, 50, 0, 50, 0.05) == 1.0


def test_an_excess_within_the_margin_is_not() -> None:
    assert gate.proportion_excess_p(8, 100, 5, 100, 0.05) > 0.5


def test_a_doubled_reconnect_rate_is_significant_and_an_equal_one_is_not() -> None:
    assert gate.rate_excess_p(120, 10.0, 60, 10.0, 1.05) < 0.001
    assert gate.rate_excess_p(30, 10.0, 30, 10.0, 1.05) > 0.5
    # the normal approximation above EXACT_LIMIT agrees in direction
    assert gate.rate_excess_p(4000, 10.0, 2000, 10.0, 1.05) < 0.001
    assert gate.rate_excess_p(2100, 10.0, 2100, 10.0, 1.05) > 0.5


def test_the_exact_tail_matches_a_hand_computed_binomial() -> None:
    # n = 4 events, equal exposure, ratio 1: P(X >= 3 | Bin(4, 0.5)) = 5/16
    assert gate.rate_excess_p(3, 1.0, 1, 1.0, 1.0) == pytest.approx(5 / 16)


def test_a_metric_judges_the_chosen_direction() -> None:
    hot = gate.mean_excess_p(70.0, 4.0, 30, 50.0, 4.0, 30, 2.5)
    assert hot < 0.001
    # lower is worse: negate both means, as compare does
    assert gate.mean_excess_p(-70.0, 4.0, 30, -50.0, 4.0, 30, 2.5) > 0.5


def test_compare_waits_for_the_minimum_sample() -> None:
    canary = gate.Cohort(devices=5, device_hours=5, auto_reverted=5)
    control = gate.Cohort(devices=100, device_hours=100)
    assert gate.compare(canary, control, gate.Rules(min_devices=20)) == []


# --- evaluation --------------------------------------------------------------------------


@pytest.fixture
def gated(deployment: Deployment) -> Deployment:
    Deployment.objects.filter(pk=deployment.pk).update(
        gate_enabled=True,
        gate_min_devices=5,
        concurrent_updates=50,
        gate_metric="cpu_temp",
        breaker_failure_percent=100,
    )
    deployment.refresh_from_db()
    return deployment


def _fleet(tenant: Tenant, deployment: Deployment, n: int) -> list[Device]:
    return [make_device(tenant.product, f"d{i}", deployment=deployment) for i in range(n)]


def _join(device: Device, uuid: str | None, *, reverted: bool = False) -> None:
    uuid = uuid or ""
    Device.objects.filter(pk=device.pk).update(firmware_uuid=uuid, firmware_auto_revert_detected=reverted)
    meta = {"firmware_auto_revert_detected": reverted}
    rollout.on_device_joined(device.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": uuid, "meta": meta})))


def _update_to(device: Device, deployment: Deployment, uuid: str | None, *, reverted: bool = False) -> None:
    """The device took its update and came back on `uuid`."""
    DeviceUpdate.objects.filter(device=device, deployment=deployment).inflight().update(
        status=UpdateStatus.COMPLETED, attempted_at=timezone.now()
    )
    _join(device, uuid, reverted=reverted)


def _evaluate(deployment: Deployment) -> gate.Evaluation:
    deployment.refresh_from_db()
    result = gate.evaluate(deployment, force=True)
    assert result is not None
    deployment.refresh_from_db()
    return result


@pytest.mark.django_db
def test_it_pauses_when_the_canary_auto_reverts(tenant: Tenant, gated: Deployment, target: Firmware) -> None:
    # given: 40 devices, 20 updated, 8 of them came back auto-reverted
    devices = _fleet(tenant, gated, 40)
    gate.evaluate(gated, force=True)  # enrols every device as control
    Deployment.objects.filter(pk=gated.pk).update(concurrent_updates=20)
    rollout.run_rollout(gated.pk)
    updated = [d for d in devices if DeviceUpdate.objects.filter(device=d).exists()]
    assert len(updated) == 20
    for i, device in enumerate(updated):
        _update_to(device, gated, "uuid-1.0.0" if i < 8 else target.uuid, reverted=i < 8)
    # when
    result = _evaluate(gated)
    # then
    assert result.state == "paused"
    assert result.canary.devices == 20 and result.control.devices == 20
    assert result.canary.auto_reverted == 8
    assert gated.paused_at is not None
    assert "auto-reverts: canary 8/20 (40.0%) vs control 0/20 (0.0%)" in gated.paused_reason
    assert gated.gate_report["state"] == "paused"


@pytest.mark.django_db
def test_a_healthy_canary_is_watched_not_paused(tenant: Tenant, gated: Deployment, target: Firmware) -> None:
    devices = _fleet(tenant, gated, 20)
    gate.evaluate(gated, force=True)
    for device in devices[:10]:
        rollout.run_rollout(gated.pk)
        _update_to(device, gated, target.uuid)
    result = _evaluate(gated)
    assert result.state == "watching"
    assert gated.paused_at is None
    assert {f.signal for f in result.findings} >= {"auto-reverts", "reconnects per device-hour"}


@pytest.mark.django_db
def test_it_counts_reconnects_on_both_join_paths_and_restarts_the_canary_window(
    tenant: Tenant, gated: Deployment, target: Firmware
) -> None:
    # given
    device = make_device(tenant.product, "d1", deployment=gated)
    gate.evaluate(gated, force=True)
    # when: two reconnects as control, one on the quiet path
    _join(device, "uuid-1.0.0")
    quiet_join(device.pk, gated.pk)
    before = GateCounter.objects.get(device=device).reconnects
    rollout.run_rollout(gated.pk)
    _update_to(device, gated, target.uuid)
    _join(device, target.uuid)
    # then
    counter = GateCounter.objects.get(device=device)
    assert before == 2
    assert counter.canary and counter.reconnects == 1


@pytest.mark.django_db
def test_it_folds_health_reports_into_alarms_and_the_metric(
    tenant: Tenant, gated: Deployment, target: Firmware
) -> None:
    # given: 10 canary devices running hot with alarms, 10 control devices cool
    devices = _fleet(tenant, gated, 20)
    Device.objects.filter(pk__in=[d.pk for d in devices[:10]]).update(firmware_uuid=target.uuid)
    gate.evaluate(gated, force=True)
    later = timezone.now() + timedelta(seconds=1)
    HealthReport.objects.bulk_create(
        [
            HealthReport(
                device=d,
                reported_at=later,
                metrics={"cpu_temp": (80.0 + i % 3) if n < 10 else (50.0 + i % 3)},
                alarms=["overheat"] if n < 10 else [],
            )
            for n, d in enumerate(devices)
            for i in range(3)
        ]
    )
    # when
    result = _evaluate(gated)
    # then
    assert result.canary.alarmed == 10 and result.control.alarmed == 0
    assert result.canary.metric_mean == pytest.approx(81.0)
    assert result.state == "paused"
    assert "cpu_temp (higher is worse): canary mean 81" in gated.paused_reason
    # folded once: a second evaluation reads no report again
    assert gate._fold_health(gated) == 0


@pytest.mark.django_db
def test_it_is_not_evaluated_more_often_than_its_interval(tenant: Tenant, gated: Deployment) -> None:
    _fleet(tenant, gated, 3)
    now = timezone.now()
    first = gate.evaluate(gated, now)
    gated.refresh_from_db()
    second = gate.evaluate(gated, now + timedelta(seconds=1))
    assert first is not None and first.state == "waiting"
    assert second is None


@pytest.mark.django_db
def test_resume_starts_the_counting_afresh(tenant: Tenant, gated: Deployment, target: Firmware) -> None:
    devices = _fleet(tenant, gated, 4)
    Device.objects.filter(pk=devices[0].pk).update(firmware_uuid=target.uuid)
    gate.evaluate(gated, force=True)
    rollout.pause("test", gated)
    rollout.resume("test", gated)
    gated.refresh_from_db()
    assert not GateCounter.objects.filter(deployment=gated).exists()
    result = _evaluate(gated)
    assert result.canary.devices == 1 and result.control.devices == 3


@pytest.mark.django_db
def test_an_ungated_deployment_is_not_judged(tenant: Tenant, deployment: Deployment) -> None:
    _fleet(tenant, deployment, 3)
    assert gate.evaluate(deployment, force=True) is None
    assert not GateCounter.objects.exists()


@pytest.mark.django_db
def test_the_orchestrator_runs_the_gate_and_claims_nothing_after_its_pause(
    tenant: Tenant, gated: Deployment, target: Firmware
) -> None:
    # given: 20 canaries of which 8 auto-reverted, 20 devices waiting
    devices = _fleet(tenant, gated, 40)
    gate.evaluate(gated, force=True)
    Deployment.objects.filter(pk=gated.pk).update(concurrent_updates=20)
    rollout.run_rollout(gated.pk)
    updated = [d for d in devices if DeviceUpdate.objects.filter(device=d).exists()]
    for i, device in enumerate(updated):
        _update_to(device, gated, "uuid-1.0.0" if i < 8 else target.uuid, reverted=i < 8)
    Deployment.objects.filter(pk=gated.pk).update(gate_checked_at=None)
    before = DeviceUpdate.objects.filter(deployment=gated).count()
    # when
    run = rollout.run_rollout(gated.pk)
    # then
    gated.refresh_from_db()
    assert gated.paused_reason.startswith("health gate")
    assert run.skipped == "paused" and not run.claimed
    assert DeviceUpdate.objects.filter(deployment=gated).count() == before
