"""The orchestrator and maintenance windows: nothing is claimed outside a
window, claims start when one opens, an attempt under way carries on when it
closes, and a stage's windows replace the deployment's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from deployments import rollout
from deployments.models import Deployment, DeploymentStage, DeviceUpdate, UpdateStatus
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices.models import Device
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

pytestmark = pytest.mark.django_db

# Monday 2026-12-07, 13:00 UTC = 14:00 in Berlin
MONDAY_AFTERNOON = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)
NIGHTLY = ["mon-fri 01:00-05:00 Europe/Berlin"]


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    frozen = Clock(MONDAY_AFTERNOON)
    monkeypatch.setattr(timezone, "now", frozen)
    yield frozen


def test_outside_its_window_a_rollout_claims_nothing_and_starts_when_it_opens(
    tenant: Tenant, deployment: Deployment, clock: Clock
) -> None:
    # given: three connected devices and a nightly window
    Deployment.objects.filter(pk=deployment.pk).update(windows=NIGHTLY)
    for i in range(3):
        rollout.assign_deployment(make_device(tenant.product, f"d{i}").pk)
    # when: the orchestrator runs in the afternoon
    run = rollout.run_rollout(deployment.pk)
    # then: nothing, and the preview says when the window opens
    assert run.claimed == [] and run.skipped == "outside the maintenance window"
    assert DeviceUpdate.objects.count() == 0
    rows = rollout.preview(Deployment.objects.get(pk=deployment.pk))
    assert all(not r.eligible for r in rows)
    assert (
        "outside the maintenance window; next window opens Tue 2026-12-08 01:00 CET (2026-12-08 00:00 UTC)"
        in rows[0].problems
    )
    # when: the clock reaches Tuesday 01:00 in Berlin
    clock.moment = datetime(2026, 12, 8, 0, 0, tzinfo=UTC)
    run = rollout.run_rollout(deployment.pk)
    # then: the slots are claimed
    assert len(run.claimed) == 3
    assert rollout.preview(Deployment.objects.get(pk=deployment.pk))[0].problems == ["an update is in flight"]


def test_an_attempt_under_way_when_the_window_closes_finishes(
    tenant: Tenant, deployment: Deployment, clock: Clock
) -> None:
    # given: a device claimed inside the window, and a second device waiting
    Deployment.objects.filter(pk=deployment.pk).update(windows=NIGHTLY, concurrent_updates=1)
    clock.moment = datetime(2026, 12, 8, 3, 55, tzinfo=UTC)  # 04:55 Berlin
    first = make_device(tenant.product, "first")
    second = make_device(tenant.product, "second")
    for device in (first, second):
        rollout.assign_deployment(device.pk)
    assert rollout.run_rollout(deployment.pk).claimed == [first.pk]
    rollout.on_status_report(first.pk, {"status": "received"})
    # when: the window closes while it downloads, and it finishes
    clock.advance(minutes=10)
    rollout.on_status_report(first.pk, {"status": "downloading"})
    rollout.on_status_report(first.pk, {"status": "completed"})
    Device.objects.filter(pk=first.pk).update(firmware_uuid=deployment.firmware.uuid)
    rollout.on_device_joined(
        first.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": deployment.firmware.uuid}))
    )
    run = rollout.run_rollout(deployment.pk)
    # then: its attempt was not cut short, and the freed slot waits for the next window
    assert DeviceUpdate.objects.get(device=first).status == UpdateStatus.SUCCEEDED
    assert run.claimed == [] and run.skipped == "outside the maintenance window"
    assert not DeviceUpdate.objects.filter(device=second).exists()


def test_a_polling_device_is_handed_nothing_outside_the_window(
    tenant: Tenant, deployment: Deployment, clock: Clock
) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(windows=NIGHTLY)
    device = make_device(tenant.product, "poller", online=False)
    assert rollout.poll_for_update(device) is None
    clock.moment = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)
    device.refresh_from_db()
    assert rollout.poll_for_update(device) is not None


def test_a_stage_window_rules_while_its_stage_runs(tenant: Tenant, deployment: Deployment, clock: Clock) -> None:
    # given: the deployment may update any time, but its canary only at 14:00-15:00 UTC
    DeploymentStage.objects.create(
        deployment=deployment, position=1, name="canary", size_count=1, windows=["daily 14:00-15:00 UTC"]
    )
    rollout.assign_deployment(make_device(tenant.product, "d0").pk)
    # when / then
    run = rollout.run_rollout(deployment.pk)
    assert run.claimed == [] and run.skipped == "outside the maintenance window"
    clock.moment = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    assert len(rollout.run_rollout(deployment.pk).claimed) == 1


def test_saving_a_bad_window_is_refused_with_the_reason(tenant: Tenant, deployment: Deployment) -> None:
    deployment.windows = ["mon-fri 01:00-05:00 Europe/Berlin", "sat 01:00-01:00 UTC"]
    with pytest.raises(ValidationError) as caught:
        rollout.save_deployment("test", deployment, ["windows"], via="test")
    assert "the range 01:00-01:00 is empty" in str(caught.value.message_dict["windows"])
