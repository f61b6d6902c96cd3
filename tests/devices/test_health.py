"""Health history: reports kept bounded, the status people see, the charts,
alarms and the location map on the device page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings

from devices import health, services
from devices.models import Device, HealthReport
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.web.conftest import client_for

pytestmark = pytest.mark.django_db

REPORT: dict[str, object] = {
    "timestamp": "2026-12-07T10:00:00Z",
    "metrics": {"cpu_usage_percent": 12.5, "cpu_temp": 48.3, "mem_used_percent": 41, "fan_rpm": 1200},
    "alarms": {},
}


def test_each_report_is_kept_with_its_numbers_and_alarms(tenant: Tenant) -> None:
    # given
    device = make_device(tenant.product, "d1")
    # when
    services.record_health(device.pk, REPORT)
    services.record_health(device.pk, {"metrics": {"cpu_usage_percent": 95}, "alarms": {"Elixir.Disk": "/ full"}})
    # then
    device.refresh_from_db()
    assert device.health == {"metrics": {"cpu_usage_percent": 95}, "alarms": {"Elixir.Disk": "/ full"}}
    first, second = HealthReport.objects.filter(device=device).order_by("reported_at")
    assert first.metrics == {"cpu_usage_percent": 12.5, "cpu_temp": 48.3, "mem_used_percent": 41.0, "fan_rpm": 1200.0}
    assert second.alarms == ["Elixir.Disk"]


def test_a_hostile_report_keeps_only_bounded_numbers(tenant: Tenant) -> None:
    # given: strings, booleans, NaN, nesting, a huge name and thousands of metrics
    device = make_device(tenant.product, "d1")
    metrics: dict[str, object] = {f"m{i}": i for i in range(5000)}
    metrics.update({"a": "12", "b": True, "c": float("nan"), "d": {"x": 1}, "e" * 500: 1})
    # when
    services.record_health(device.pk, {"metrics": metrics, "alarms": [{"x": 1}] * 100})
    services.record_health(device.pk, {"metrics": ["not", "a", "map"], "alarms": "nope"})
    # then
    kept = HealthReport.objects.filter(device=device).order_by("reported_at").first()
    assert kept is not None
    assert len(kept.metrics) == health.MAX_METRICS and all(isinstance(v, float) for v in kept.metrics.values())
    assert len(kept.alarms) == health.MAX_ALARMS
    assert HealthReport.objects.filter(device=device).count() == 2


def test_the_status_follows_the_thresholds_and_alarms() -> None:
    assert health.status_of(None).level == health.UNKNOWN
    assert health.status_of({"metrics": {"cpu_usage_percent": 10}}).level == health.HEALTHY
    warning = health.status_of({"metrics": {"mem_used_percent": 75}})
    assert warning.level == health.WARNING and warning.reasons == ["Memory used (%) 75 ≥ 70"]
    bad = health.status_of({"metrics": {"disk_used_percentage": 95, "mem_used_percent": 75}, "alarms": {"x": ""}})
    assert bad.level == health.UNHEALTHY and len(bad.reasons) == 3
    assert health.status_of({"metrics": {}, "alarms": {"Elixir.Disk": "/"}}).level == health.WARNING


def test_history_is_pruned_by_age_and_per_device(tenant: Tenant, settings: Settings) -> None:
    # given: 5 reports of one device, 1 of another, one of them old
    settings.HEALTH_HISTORY_PER_DEVICE = 3
    settings.HEALTH_HISTORY_DAYS = 7
    busy, quiet = make_device(tenant.product, "busy"), make_device(tenant.product, "quiet")
    now = timezone.now()
    for minutes in range(5):
        HealthReport.objects.create(device=busy, reported_at=now - timedelta(minutes=minutes), metrics={"v": minutes})
    HealthReport.objects.create(device=quiet, reported_at=now - timedelta(days=8), metrics={})
    # when
    deleted = health.prune_health_history()
    # then: the quiet device's old report, and the busy one's two oldest
    assert deleted == 3
    assert sorted(r.metrics["v"] for r in HealthReport.objects.filter(device=busy)) == [0, 1, 2]
    assert not HealthReport.objects.filter(device=quiet).exists()


def test_the_device_page_charts_metrics_lists_alarms_and_maps_the_location(tenant: Tenant, settings: Settings) -> None:
    # given
    settings.MAP_TILE_URL = "https://tiles.example.org/{z}/{x}/{y}.png"
    device = make_device(tenant.product, "d1")
    services.record_health(device.pk, REPORT)
    services.record_health(device.pk, {"metrics": {"cpu_usage_percent": 93.0}, "alarms": {"Elixir.Disk": "/"}})
    Device.objects.filter(pk=device.pk).update(location={"latitude": 52.52, "longitude": 13.405, "source": "geoip"})
    # when
    page = client_for(tenant.viewer).get(f"/org/acme/devices/{device.pk}/").content.decode()
    # then
    assert 'id="health-status">unhealthy' in page and "CPU usage (%) 93 ≥ 90" in page
    assert 'data-metric="cpu_usage_percent"' in page and "<polyline" in page
    assert 'data-metric="fan_rpm"' in page  # a custom metric is charted too
    assert "Elixir.Disk" in page.split('id="alarms"')[1]
    assert page.count("background-image: url('https://tiles.example.org/13/") == 9
    assert "52.52000, 13.40500" in page and 'class="map-marker"' in page


def test_without_tiles_the_marker_and_coordinates_still_show(tenant: Tenant, settings: Settings) -> None:
    settings.MAP_TILE_URL = ""
    device = make_device(tenant.product, "d1")
    Device.objects.filter(pk=device.pk).update(location={"latitude": -33.8688, "longitude": 151.2093})
    page = client_for(tenant.viewer).get(f"/org/acme/devices/{device.pk}/").content.decode()
    assert 'class="tile"' not in page
    assert 'class="map-marker"' in page and "-33.86880, 151.20930" in page


@pytest.mark.parametrize(
    "location",
    [
        {"latitude": 91, "longitude": 0},
        {"latitude": "1", "longitude": 2},
        {"lat": 1},
        {"latitude": True, "longitude": 1},
    ],
)
def test_an_unusable_location_draws_no_map(tenant: Tenant, location: dict[str, object]) -> None:
    device = make_device(tenant.product, "d1")
    Device.objects.filter(pk=device.pk).update(location=location)
    response = client_for(tenant.viewer).get(f"/org/acme/devices/{device.pk}/")
    assert response.status_code == 200 and 'id="device-map"' not in response.content.decode()


def test_the_device_list_shows_each_health_status(tenant: Tenant) -> None:
    ok, hot = make_device(tenant.product, "ok"), make_device(tenant.product, "hot")
    services.record_health(ok.pk, {"metrics": {"cpu_usage_percent": 5}})
    services.record_health(hot.pk, {"metrics": {"cpu_usage_percent": 85}})
    make_device(tenant.product, "silent")
    page = client_for(tenant.viewer).get("/org/acme/devices/").content.decode()
    assert page.count("health-healthy") == 1 and page.count("health-warning") == 1 and page.count("health-unknown") == 1
