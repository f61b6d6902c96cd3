"""The breaker's verdict and a run's claims: the pause is decided under the
deployment's row lock, on what is committed then, so no claim lands between a
verdict and its pause, and claims made meanwhile count as in flight
(docs/rollout.md, "Rollout outcomes and the breaker")."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

pytestmark = pytest.mark.django_db


def test_a_run_that_claims_while_the_breaker_judges_is_counted_before_any_pause(
    tenant: Tenant, deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: 10 devices finished (3 failed: 30 %, the threshold), 10 more eligible
    deployment.concurrent_updates = 10
    deployment.breaker_failure_percent = 30
    deployment.breaker_min_attempts = 10
    deployment.save()
    now = timezone.now()
    for i in range(10):
        device = make_device(tenant.product, f"done{i}", deployment=deployment)
        DeviceUpdate.objects.create(
            device=device,
            deployment=deployment,
            firmware=deployment.firmware,
            status=UpdateStatus.FAILED if i < 3 else UpdateStatus.SUCCEEDED,
            finished_at=now,
        )
    for i in range(10):
        make_device(tenant.product, f"next{i}", deployment=deployment)
    # A run claims the next ten just after the breaker's first count.
    tally = rollout._tally
    calls: list[int] = []

    def tally_then_claim(*args: Any) -> tuple[int, int, int]:
        counted = tally(*args)
        if not calls:
            calls.append(1)
            rollout.run_rollout(deployment.pk)
        return counted

    monkeypatch.setattr(rollout, "_tally", tally_then_claim)
    # when
    paused = rollout.check_breaker(deployment.pk)
    # then: judged with the claims in flight (3 of 10 finished, 10 in flight:
    # 15 %), not paused, and nothing claimed before a pause it did not see
    deployment.refresh_from_db()
    assert DeviceUpdate.objects.filter(status=UpdateStatus.REQUESTED).count() == 10
    assert not paused and deployment.paused_at is None, deployment.paused_reason


def test_the_breaker_still_pauses_when_the_share_holds_under_the_lock(tenant: Tenant, deployment: Deployment) -> None:
    # given: 10 finished, 3 failed, nothing in flight
    deployment.breaker_failure_percent = 30
    deployment.breaker_min_attempts = 10
    deployment.save()
    for i in range(10):
        device = make_device(tenant.product, f"done{i}", deployment=deployment)
        DeviceUpdate.objects.create(
            device=device,
            deployment=deployment,
            firmware=deployment.firmware,
            status=UpdateStatus.FAILED if i < 3 else UpdateStatus.SUCCEEDED,
            finished_at=timezone.now(),
        )
    # when
    paused = rollout.check_breaker(deployment.pk)
    # then
    deployment.refresh_from_db()
    assert paused and "3 of 10 devices" in deployment.paused_reason
