"""Stored JSON is shown as key/value text: health reports, locations and audit
details never appear as Python's or JSON's own text."""

from __future__ import annotations

import pytest
from django.utils import timezone

from devices.models import Device
from nerveshub.tenancy import services as tenancy
from nerveshub.web.templatetags.readable import MAX_PAIRS, flatten
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.web.conftest import client_for


def test_it_flattens_nested_values_into_paths() -> None:
    report = {
        "metrics": {"cpu_temp": 48.3, "load_1min": 0.25, "mem_used_percent": 41.0},
        "alarms": {"Elixir.Disk": ["/root", "nearly full"]},
        "checks": [{"name": "ntp", "ok": True}],
        "empty": {},
        "none": None,
    }
    assert flatten(report) == [
        ("metrics.cpu_temp", "48.3"),
        ("metrics.load_1min", "0.25"),
        ("metrics.mem_used_percent", "41"),
        ("alarms.Elixir.Disk", "/root, nearly full"),
        ("checks[1].name", "ntp"),
        ("checks[1].ok", "yes"),
        ("empty", "—"),
        ("none", "—"),
    ]


def test_a_huge_report_is_cut() -> None:
    pairs = flatten({f"k{i}": i for i in range(10 * MAX_PAIRS)})
    assert len(pairs) == MAX_PAIRS + 1 and pairs[-1] == ("…", "more values not shown")


@pytest.mark.django_db
def test_the_device_page_and_the_audit_log_show_no_raw_structures(tenant: Tenant) -> None:
    # given
    device = make_device(tenant.product, "d1")
    Device.objects.filter(pk=device.pk).update(
        health={"metrics": {"cpu_temp": 48.3}, "alarms": {"disk": "full"}},
        health_reported_at=timezone.now(),
        location={"latitude": 52.52, "longitude": 13.405, "source": "geoip"},
    )
    tenancy.audit(tenant.admin, "device.updated", device, details={"changes": {"tags": ["a", "b"]}, "via": "api"})
    client = client_for(tenant.viewer)
    # when
    device_page = client.get(f"/org/acme/devices/{device.pk}/").content.decode()
    audit_page = client.get("/org/acme/audit/").content.decode()
    # then
    for page in (device_page, audit_page):
        assert "{&#x27;" not in page and "{'" not in page and '{"' not in page
    assert "metrics.cpu_temp" in device_page and "48.3" in device_page and "latitude" in device_page
    assert "changes.tags" in audit_page and "a, b" in audit_page
