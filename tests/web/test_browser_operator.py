"""An operator's own pages in a real headless Chromium against a real hub
process: signing in with an e-mail address and changing it, creating a product
and issuing its shared secret, and reading a device's health charts, alarms
and map (with no map tiles reachable)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from devices.models import Device, HealthReport
from nerveshub.tenancy.models import Product
from nerveshub.web.access import org_slug
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.support.hub import HubLauncher


@pytest.fixture
def reporting_device(tenant: Tenant) -> Device:
    """Written before the browser starts (see tests/web/test_browser.py, org_keys)."""
    device = make_device(tenant.product, "dev-health")
    now = timezone.now()
    for minutes in range(12, 0, -1):
        HealthReport.objects.create(
            device=device,
            reported_at=now - timedelta(minutes=minutes),
            metrics={"cpu_usage_percent": 20.0 + minutes * 6, "cpu_temp": 40.0 + minutes},
            alarms=["Elixir.Disk"] if minutes == 3 else [],
        )
    Device.objects.filter(pk=device.pk).update(
        health={"metrics": {"cpu_usage_percent": 26.0, "cpu_temp": 41.0}, "alarms": {}},
        health_reported_at=now,
        location={"latitude": 48.8584, "longitude": 2.2945, "source": "geoip"},
    )
    return device


def test_an_operator_manages_account_products_and_reads_device_health(
    tenant: Tenant, reporting_device: Device, live_hub: HubLauncher, browser: Any, shot: Any
) -> None:
    # given: a hub whose map tiles cannot be reached (nothing listens on port 9)
    hub = live_hub({"MAP_TILE_URL": "http://127.0.0.1:9/{z}/{x}/{y}.png"})
    base, slug = hub.http_url, org_slug(tenant.org)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)

    # when: alice signs in with her e-mail address and changes it
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "Alice@Example.com")
    page.fill("input[name=password]", "pw-alice")
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.click("header .me a[title='Your account']")
    page.fill("#email-form input[name=email]", "alice@acme.example")
    page.fill("#email-form input[name=current_password]", "pw-alice")
    with page.expect_navigation():
        page.click("#email-form button[type=submit]")
    # then
    assert "alice@acme.example" in page.inner_text("main")
    shot(page, "account")

    # when: she creates a product with the geo extension (health is on already) and issues its secret
    page.goto(f"{base}/org/{slug}/products/")
    page.fill("#product-form input[name=name]", "gadget")
    page.check("#product-form input[value=geo]")
    with page.expect_navigation():
        page.click("#product-form button[type=submit]")
    with page.expect_navigation():
        page.click("table >> text=gadget")
    with page.expect_navigation():
        page.click("text=Issue a shared secret")
    # then: the secret is on the page this once
    secret_box = page.inner_text("#new-secret")
    assert "nhp_" in secret_box and "not shown again" in secret_box
    shot(page, "product")
    product_url = page.url.removesuffix("secrets/")
    page.goto(product_url)  # the page again: the secret is gone
    assert page.query_selector("#new-secret") is None

    # when: she opens the reporting device
    page.goto(f"{base}/org/{slug}/devices/{reporting_device.pk}/")
    # then: a chart per metric, the alarm, and the marker on a map without tiles
    assert page.inner_text("#health-status") == "healthy"
    charts = page.query_selector_all("figure.metric svg.chart polyline")
    assert len(charts) == 2
    assert "Elixir.Disk" in page.inner_text("#alarms")
    marker = page.query_selector("#device-map .map-marker")
    frame = page.query_selector("#device-map")
    assert marker is not None and frame is not None and marker.is_visible()
    box, bounds = marker.bounding_box(), frame.bounding_box()
    assert box is not None and bounds is not None
    # the marker sits in the middle of the map
    assert abs((box["x"] + box["width"] / 2) - (bounds["x"] + bounds["width"] / 2)) < 4
    assert "48.85840, 2.29450" in page.inner_text("main")
    shot(page, "device-health")

    assert Product.objects.get(org=tenant.org, name="gadget").extensions == ["health", "geo"]
