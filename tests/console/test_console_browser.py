"""The console in a real browser: headless Chromium (Debian's package) driven by
Playwright, a real hub process, and a nerves_hub_link mimic with remote IEx.

Without Chromium (or Playwright, or the terminal assets from `make
console-assets`) the test is skipped locally and fails in CI
(NERVESHUB_REQUIRE_SERVICES=1), which installs all three.

CONSOLE_SCREENSHOT=docs/console.png writes the page's screenshot there (how the
README's picture is made); otherwise it goes to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders

from console.views import VENDOR_ASSETS
from devices import services as device_services
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import REQUIRE_SERVICES
from tests.console.conftest import PROMPT, IExDevice, eventually
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import ROOT, HubLauncher

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

READ_TERMINAL = """() => {
  const buffer = window.nervesConsole.term.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
  return lines.join("\\n");
}"""


def _missing() -> str | None:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (requirements-dev.txt)"
    if not all(finders.find(name) for name in VENDOR_ASSETS):
        return "the console's terminal assets are missing (make console-assets)"
    return None


@pytest.fixture
def browser_ready() -> None:
    reason = _missing()
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.slow
def test_it_runs_a_console_session_in_chromium(
    browser_ready: None, live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice, tmp_path: Path
) -> None:
    from playwright.async_api import FilePayload, async_playwright

    # given: a connected device with remote IEx, and the manager's login
    hub = live_hub({"CONSOLE_DEVICE_CHECK_SECONDS": "1"})
    row = device_services.create_device("test", creds.tenant.product, "dev-browser")
    device, iex = iex_device(hub.ws_url, "dev-browser")
    upload = b"config: true\nanswer: 42\n" * 100  # 2400 bytes: three chunks
    screenshot = Path(os.environ.get("CONSOLE_SCREENSHOT") or tmp_path / "console.png")
    if not screenshot.is_absolute():
        screenshot = ROOT / screenshot

    async def scenario() -> tuple[Any, bytes]:
        await device.connect()
        iex.start()
        await iex.up("Interactive Elixir (1.18.0) - press Ctrl+C to exit\r\n" + PROMPT)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 700})
                page.set_default_timeout(15_000)
                # when: the manager opens the console and logs in on the way
                await page.goto(f"{hub.http_url}/console/{row.pk}/")
                await page.fill("input[name=username]", creds.tenant.manager.username)
                await page.fill("input[name=password]", "pw-mallory-manager")
                await page.press("input[name=password]", "Enter")
                await page.wait_for_url(f"**/console/{row.pk}/")
                await page.wait_for_selector("#connection.online")
                await page.wait_for_function(f"() => ({READ_TERMINAL})().includes('Interactive Elixir')")
                # when: a command is typed into the terminal
                await page.click("#terminal")
                await page.keyboard.type("Application.started_applications() |> length()")
                await page.keyboard.press("Enter")
                await page.wait_for_function(f"() => ({READ_TERMINAL})().includes('|> length()\"')")
                # when: a file is uploaded from the page
                payload: FilePayload = {"name": "app.conf", "mimeType": "text/plain", "buffer": upload}
                await page.set_input_files("#upload-input", files=[payload])
                await page.click("#upload-button")
                await page.wait_for_function(
                    "() => document.getElementById('upload-status').textContent.includes('sent to the device')"
                )
                await eventually(lambda: "app.conf" in iex.finished)
                # when: the device sends a file (NervesHubLink.send_file/1)
                async with page.expect_download() as download_info:
                    await device.push("console", "file-data/start", {"filename": "dmesg.txt"})
                    await device.push("console", "file-data", {"filename": "dmesg.txt", "chunk": 0, "data": "Ym9vdA=="})
                    await device.push("console", "file-data/stop", {"filename": "dmesg.txt"})
                download = await download_info.value
                downloaded = await asyncio.to_thread(Path(await download.path()).read_bytes)
                # when: the device drops off and comes back
                await iex.stop()
                await device.close()
                await page.wait_for_function(f"() => ({READ_TERMINAL})().includes('device disconnected')")
                await device.connect()
                iex.start()
                await page.wait_for_function(f"() => ({READ_TERMINAL})().includes('*** device connected ***')")
                await page.click("#terminal")
                await page.keyboard.type("node()")
                await page.keyboard.press("Enter")
                await page.wait_for_function(f"() => ({READ_TERMINAL})().includes('\"node()\"')")
                terminal = await page.evaluate(READ_TERMINAL)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(screenshot))
                await page.close()
            finally:
                await browser.close()
        await asyncio.sleep(0.3)
        await iex.stop()
        await device.close()
        return terminal, downloaded

    terminal, downloaded = run(scenario())
    # then: the device saw the keystrokes and the window size, and echoed
    typed = "".join(m[4]["data"] for m in iex.pushed if m[3] == "dn")
    assert typed == "Application.started_applications() |> length()\rnode()\r"
    assert iex.sizes and iex.sizes[0]["width"] > 40 and iex.sizes[0]["height"] > 5
    assert '"Application.started_applications() |> length()"' in terminal
    # then: the disconnect was shown and the same page went on after the device returned
    order = [terminal.index(text) for text in ("device disconnected", "*** device connected ***", '"node()"')]
    assert order == sorted(order)
    # then: the uploaded file arrived whole at the device; the device's file reached the browser
    assert iex.files["app.conf"] == upload
    assert iex.uploaded_by["app.conf"] == creds.tenant.manager.username
    assert downloaded == b"boot"
    device.assert_no_violations()
    assert screenshot.stat().st_size > 10_000
    wait_until(lambda: AuditEvent.objects.filter(action="console.closed", subject_id=str(row.pk)).exists())
    actions = set(AuditEvent.objects.filter(subject_id=str(row.pk)).values_list("action", flat=True))
    assert {"console.opened", "console.input", "console.file_uploaded", "console.file_received"} <= actions
