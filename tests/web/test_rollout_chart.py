"""The rollout page's chart: succeeded, failed and in-flight devices over time,
from the attempts' own timestamps; failures with readable times."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from deployments.models import DeviceUpdate, UpdateStatus
from deployments.timeline import rollout_timeline
from tests.deployments.conftest import make_device, make_firmware
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db


def test_the_timeline_counts_each_moment(fleet: Fleet) -> None:
    # given: from t0, three attempts: one succeeds at +10 min, one fails at +20, one still running
    deployment = fleet.deployment
    DeviceUpdate.objects.filter(deployment=deployment).delete()
    t0 = timezone.now() - timedelta(minutes=30)
    product = fleet.tenant.product
    for name, status, finished in (
        ("a", UpdateStatus.SUCCEEDED, 10),
        ("b", UpdateStatus.FAILED, 20),
        ("c", UpdateStatus.DOWNLOADING, None),
    ):
        DeviceUpdate.objects.create(
            device=make_device(product, name),
            deployment=deployment,
            firmware=deployment.firmware,
            status=status,
            created_at=t0,
            finished_at=t0 + timedelta(minutes=finished) if finished else None,
        )
    # an attempt of an earlier firmware is not this rollout's
    DeviceUpdate.objects.create(
        device=make_device(product, "old"),
        deployment=deployment,
        firmware=make_firmware(product, "0.9.0"),
        status=UpdateStatus.FAILED,
        created_at=t0,
        finished_at=t0,
    )
    # when: four samples, at +0, +10, +20, +30 minutes
    timeline = rollout_timeline(deployment, points=4, now=t0 + timedelta(minutes=30))
    # then
    assert timeline is not None
    assert timeline.succeeded == [0, 1, 1, 1]
    assert timeline.failed == [0, 0, 1, 1]
    assert timeline.inflight == [3, 2, 1, 1]


def test_no_attempt_no_chart(fleet: Fleet) -> None:
    DeviceUpdate.objects.all().delete()
    assert rollout_timeline(fleet.deployment) is None
    page = client_for(fleet.tenant.viewer).get(f"/org/{fleet.slug}/deployments/{fleet.deployment.pk}/")
    assert 'id="rollout-chart"' not in page.content.decode()


def test_the_rollout_page_draws_the_chart_and_readable_failure_times(fleet: Fleet) -> None:
    # given: the fleet's failed attempt
    client = client_for(fleet.tenant.viewer)
    url = f"/org/{fleet.slug}/deployments/{fleet.deployment.pk}/"
    # when
    page = client.get(url).content.decode()
    progress = client.get(url + "progress.json").json()
    # then
    chart = page.split('id="rollout-chart"')[1]
    assert chart.count("<polyline") == 3 and 'class="legend failed">failed 1' in chart
    failure = progress["failures"][0]
    assert failure["at"].endswith("ago)") and " UTC (" in failure["at"] and "T" in failure["at_iso"]
