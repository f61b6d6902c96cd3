"""The live device list in a real headless Chromium against a real hub
process: a simulated device connects on the device socket and its row turns
online without the page being reloaded; the dashboard's counts follow."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from devices import services as device_services
from devices.models import Device
from nerveshub.web.access import org_slug
from tests.devices.conftest import Credentials, creds  # noqa: F401 (fixture re-export)
from tests.support.hub import HubLauncher


@pytest.fixture
def offline_device(creds: Credentials) -> Device:  # noqa: F811
    """Written before the browser starts (see tests/web/test_browser.py, org_keys)."""
    return device_services.create_device("test", creds.tenant.product, "dev-browser-live")


class DeviceInThread:
    """The device client on its own event loop: Playwright's sync API holds
    this thread's."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.connected = threading.Event()
        self.leave = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        await self.device.connect()
        self.connected.set()
        await asyncio.to_thread(self.leave.wait)
        await self.device.close()


def test_the_device_list_shows_a_device_going_online_without_a_reload(
    creds: Credentials,  # noqa: F811
    offline_device: Device,
    live_hub: HubLauncher,
    browser: Any,
    shot: Any,
) -> None:
    # given: the viewer has the device list and the dashboard open, live
    hub = live_hub({"LIVE_FLUSH_MS": "200"})
    base, slug = hub.http_url, org_slug(creds.tenant.org)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "victor")
    page.fill("input[name=password]", "pw-victor")
    with page.expect_navigation():
        page.click("button[type=submit]")
    dashboard = context.new_page()
    dashboard.goto(f"{base}/org/{slug}/")
    device_page = context.new_page()
    device_page.goto(f"{base}/org/{slug}/devices/{offline_device.pk}/")
    page.goto(f"{base}/org/{slug}/devices/")
    row = f'tr[data-live-device="{offline_device.pk}"]'
    assert page.get_attribute(f"{row} [data-live~=presence]", "data-presence") == "not_seen"
    page.wait_for_selector("body[data-live=open]")
    dashboard.wait_for_selector("body[data-live=open]")
    device_page.wait_for_selector("body[data-live=open]")
    assert dashboard.inner_text("[data-live-count=online] b") == "0"
    # a mark that a reload would wipe
    page.evaluate("window.liveMark = 1")

    # when: the simulated device connects on the device socket
    device = DeviceInThread(creds.device(hub.ws_url, "dev-browser-live"))
    device.thread.start()
    try:
        assert device.connected.wait(30)

        # then: its row says connected, on the same page, and "just now"
        page.wait_for_selector(f"{row} [data-live~=presence][data-presence=connected]")
        assert page.inner_text(f"{row} [data-live~=presence] .badge") == "Connected"
        assert page.inner_text(f"{row} [data-live~=seen]") == "just now"
        assert page.evaluate("window.liveMark") == 1
        # and the dashboard refetched its counts
        dashboard.wait_for_function("() => document.querySelector('[data-live-count=online] b').textContent === '1'")
        assert dashboard.inner_text("[data-live-count=offline] b") == "0"
        # and the device's own page its header
        device_page.wait_for_selector("h1 [data-live~=presence][data-presence=connected] .badge.connected")
        shot(page, "live-devices")

        # when: the device leaves
        device.leave.set()
        device.thread.join(30)
        # then
        page.wait_for_selector(f"{row} [data-live~=presence][data-presence=disconnected]")
        assert page.evaluate("window.liveMark") == 1
    finally:
        device.leave.set()
