"""An operator's device and firmware pages in a real headless Chromium against a
real hub process: creating a device, turning its updates off, moving it to
another product, deleting and restoring it, setting a product's health
thresholds and seeing the list's status follow them; opening a firmware file's
page, and uploading a file whose row appears and validates without a reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devices.models import Device
from firmware import services as firmware_services
from firmware.models import Firmware
from nerveshub.tenancy import services as tenancy
from nerveshub.web.access import org_slug
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, generate_keypair
from tests.support.hub import HubLauncher
from tests.web import test_browser

# A Celery worker when the tests run with Redis (validation is a task there);
# nothing in embedded mode, where the hub runs tasks itself.
worker = test_browser.worker


@pytest.fixture
def fleet_rows(tenant: Tenant) -> Device:
    """Written before the browser starts (see tests/web/test_browser.py, org_keys):
    a second product to move to, and a device at 50% CPU."""
    tenancy.get_or_create_product("test", tenant.org, "gizmo")
    device = make_device(tenant.product, "dev-busy")
    Device.objects.filter(pk=device.pk).update(health={"metrics": {"cpu_usage_percent": 50.0}, "alarms": {}})
    return device


def _sign_in(page: Any, base: str, slug: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw-alice")
    with page.expect_navigation():
        page.click("button[type=submit]")


def _row_of(page: Any, identifier: str) -> Any:
    return page.locator("table.devices tbody tr", has_text=identifier)


def test_an_operator_creates_moves_deletes_and_restores_a_device_and_reads_health(
    tenant: Tenant, fleet_rows: Device, live_hub: HubLauncher, browser: Any, shot: Any
) -> None:
    # given
    hub = live_hub()
    base, slug = hub.http_url, org_slug(tenant.org)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
    _sign_in(page, base, slug)

    # when: alice creates a device from the device list
    page.goto(f"{base}/org/{slug}/devices/")
    with page.expect_navigation():
        page.click("#device-links >> text=New device")
    page.select_option("#device-form select[name=product]", label="widget")
    page.fill("#device-form input[name=identifier]", "sn-browser-1")
    page.fill("#device-form input[name=tags]", "lab eu")
    page.fill("#device-form textarea[name=description]", "On the bench")
    with page.expect_navigation():
        page.click("#device-form button[type=submit]")
    # then: its page
    assert page.inner_text("h1").startswith("sn-browser-1")
    assert "Device sn-browser-1 created." in page.inner_text(".messages")
    device_url = page.url
    shot(page, "device-created")

    # when: she disables its updates
    with page.expect_navigation():
        page.click("button[value=disable_updates]")
    # then
    assert "Updates disabled." in page.inner_text(".messages")
    assert page.query_selector("button[value=enable_updates]") is not None

    # when: she moves it to the other product
    page.select_option("#move-product", label="gizmo")
    with page.expect_navigation():
        page.click("#move-form button[type=submit]")
    # then
    assert "moved to gizmo" in page.inner_text(".messages")
    assert "gizmo" in page.inner_text("section >> nth=0")

    # when: she deletes it
    with page.expect_navigation():
        page.click("#delete-form button[type=submit]")
    # then: it has left the list, and waits among the deleted devices
    assert "can be restored" in page.inner_text(".messages")
    assert _row_of(page, "sn-browser-1").count() == 0
    with page.expect_navigation():
        page.click("#device-links >> text=Deleted devices")
    assert "sn-browser-1" in page.inner_text("#deleted-devices")
    shot(page, "devices-deleted")

    # when: she restores it
    with page.expect_navigation():
        page.locator("#deleted-devices tr", has_text="sn-browser-1").locator("button").click()
    # then: its page again
    assert page.url == device_url
    assert "restored" in page.inner_text(".messages")

    # when: the busy device is healthy by the hub's limits; she lowers the product's CPU limits
    page.goto(f"{base}/org/{slug}/devices/")
    assert _row_of(page, "dev-busy").locator(".badge.health-healthy").count() == 1
    page.goto(f"{base}/org/{slug}/products/{tenant.product.pk}/")
    page.fill("#thresholds-form input[name=cpu_usage_percent__warning]", "30")
    page.fill("#thresholds-form input[name=cpu_usage_percent__unhealthy]", "45")
    with page.expect_navigation():
        page.click("#thresholds-form button[type=submit]")
    assert "Health thresholds saved." in page.inner_text(".messages")
    shot(page, "product-thresholds")
    # then: the list shows it unhealthy, with the reason on the badge
    page.goto(f"{base}/org/{slug}/devices/")
    badge = _row_of(page, "dev-busy").locator(".badge.health-unhealthy")
    assert badge.inner_text() == "unhealthy"
    assert "≥ 45" in (badge.get_attribute("title") or "")
    shot(page, "devices-health")

    # and the device's own page and audit log say what happened to it (read in
    # the browser: ORM calls while Playwright runs would hold a connection open)
    page.goto(device_url)
    assert page.input_value("input[name=tags]") == "lab eu"
    assert "disabled" in page.inner_text("section >> nth=0") and "gizmo" in page.inner_text("section >> nth=0")
    page.goto(f"{device_url}audit/")
    log = page.inner_text("main")
    for action in ("device.created", "device.updates_disabled", "device.moved", "device.deleted", "device.restored"):
        assert action in log, action


@pytest.fixture
def signing_key(tenant: Tenant) -> tuple[KeyPair, Firmware]:
    """Written before the browser starts: the org's key and a file already listed."""
    keypair = generate_keypair()
    firmware_services.create_signing_key("test", tenant.org, "release", keypair.public)
    return keypair, make_firmware(tenant.product, "1.0.0")


def test_an_operator_opens_firmware_and_sees_an_upload_appear_without_reload(
    tenant: Tenant,
    signing_key: tuple[KeyPair, Firmware],
    live_hub: HubLauncher,
    worker: None,
    browser: Any,
    shot: Any,
    tmp_path: Path,
) -> None:
    # given
    keypair, listed = signing_key
    fw_path = tmp_path / "widget-4.0.0.fw"
    fw_path.write_bytes(build_firmware(FirmwareSpec(product="widget", version="4.0.0", key=keypair)))
    hub = live_hub()
    base, slug = hub.http_url, org_slug(tenant.org)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(60_000)
    _sign_in(page, base, slug)

    # when: alice opens the listed file's page from the list
    page.goto(f"{base}/org/{slug}/firmware/")
    with page.expect_navigation():
        page.click("#firmware-table >> text=1.0.0")
    # then
    assert page.url == f"{base}/org/{slug}/firmware/{listed.pk}/"
    assert listed.sha256 in page.inner_text("#fw-sha256")
    assert page.query_selector("#fw-download") is not None
    shot(page, "firmware-detail")

    # when: she uploads a file on the list
    page.goto(f"{base}/org/{slug}/firmware/")
    page.evaluate("window.notReloaded = true")
    rows_before = page.locator("#firmware-table tr[data-firmware]").count()
    page.select_option("#upload-form select[name=product]", label="widget")
    page.set_input_files("#upload-form input[name=file]", str(fw_path))
    page.click("#upload-form button[type=submit]")
    # then: its row comes first and turns valid, on the same page
    new_row = page.locator("#firmware-table tbody tr", has_text="widget-4.0.0.fw")
    new_row.locator(".badge.valid").wait_for(timeout=120_000)
    assert page.locator("#firmware-table tr[data-firmware]").count() == rows_before + 1
    assert "widget-4.0.0.fw" in page.locator("#firmware-table tbody tr").first.inner_text()
    assert "4.0.0" in new_row.locator("td[data-cell=version]").inner_text()
    assert page.evaluate("window.notReloaded") is True
    shot(page, "firmware-uploaded")
    # and its version links to its page
    with page.expect_navigation():
        new_row.locator("td[data-cell=version] a").click()
    assert "4.0.0" in page.inner_text("h1") and "release" in page.inner_text("#fw-key")
