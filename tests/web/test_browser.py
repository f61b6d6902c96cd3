"""The organization pages in a real headless Chromium against real hub
processes: sign in, upload a signed firmware and watch it validate, create and
activate a deployment, and watch a simulated device update on the live rollout
view. Screenshots of the main pages go to tmp_path, or, with
NERVESHUB_SCREENSHOTS=docs, to docs/pages-*.png (how those were made)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from devices import services as device_services
from devices.services import IssuedSecret
from firmware import services as firmware_services
from nerveshub.web.access import org_slug
from tests.conftest import Tenant, services_available
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, generate_keypair
from tests.support.hub import ROOT, HubLauncher, HubProcess, database_url_for_children
from tests.support.nhl_client import NHLDevice

# --purge: tasks queued by earlier tests (whose rows are gone) are dropped, not run.
WORKER_ARGS = ["--pool", "solo", "--purge", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"]


@pytest.fixture
def worker(live_hub: HubLauncher, tmp_path: Path) -> Iterator[None]:
    """With Redis, tasks (validation, rollout runs) go to Celery: run a real
    worker on the test database. Embedded mode runs them in the hub process."""
    if not services_available():
        yield None
        return
    env = {**os.environ, "DATABASE_URL": database_url_for_children(), "DATA_DIR": str(settings.DATA_DIR)}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "nerveshub", "worker", *WORKER_ARGS],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # --purge drops what is queued when the worker starts: the test's own
        # tasks must be sent after that, so wait for "ready".
        deadline = time.monotonic() + 120
        while " ready." not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        yield None
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        print(f"--- celery worker ---\n{log_path.read_text(errors='replace')[-20000:]}")


class SimulatedDevice(threading.Thread):
    """A device that takes the update it is sent: reports progress, then comes
    back on the new firmware, as nerves_hub_link does after a reboot."""

    def __init__(self, hub: HubProcess, key: str, secret: str) -> None:
        super().__init__(daemon=True)
        self.device = NHLDevice(url=hub.ws_url, identifier="dev-browser-1", key=key, secret=secret)
        self.joined = threading.Event()
        self.updated = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._life())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _life(self) -> None:
        device = self.device
        await device.connect(timeout=30)
        self.joined.set()
        message = await device.next_event("update", timeout=150)
        meta = message[4]["firmware_meta"]
        await device.push("device", "status_update", {"status": "received"})
        await device.push("device", "fwup_progress", {"stage": "updating", "value": 50})
        await device.push("device", "fwup_progress", {"stage": "updating", "value": 100})
        await device.push("device", "status_update", {"status": "completed"})
        await device.heartbeat(timeout=30)
        await device.close()
        device.firmware = {**device.firmware, "nerves_fw_uuid": meta["uuid"], "nerves_fw_version": meta["version"]}
        await device.connect(timeout=30)
        self.updated.set()
        await asyncio.to_thread(self.stop.wait)
        await device.close()


@pytest.fixture
def org_keys(tenant: Tenant) -> tuple[KeyPair, IssuedSecret]:
    """Written before the browser starts: ORM calls made while Playwright's
    sync API is active would run on a connection of their own that outlives
    the test and blocks dropping the test database."""
    keypair = generate_keypair()
    firmware_services.create_signing_key("test", tenant.org, "release", keypair.public)
    _, secret = device_services.create_product_secret("test", tenant.product)
    return keypair, secret


def test_a_person_uploads_deploys_and_watches_a_device_update(
    tenant: Tenant,
    org_keys: tuple[KeyPair, IssuedSecret],
    live_hub: HubLauncher,
    worker: None,
    browser: Any,
    shot: Any,
    tmp_path: Path,
) -> None:
    # given: an org with a signing key and a product key, a hub, and a signed firmware file
    keypair, secret = org_keys
    spec = FirmwareSpec(product="widget", version="2.0.0", platform="rpi4", architecture="aarch64", key=keypair)
    fw_path = tmp_path / "widget-2.0.0.fw"
    fw_path.write_bytes(build_firmware(spec))
    hub = live_hub()
    base = hub.http_url
    slug = org_slug(tenant.org)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    # Generous limits: CI machines are shared and these steps cross three processes.
    page.set_default_timeout(60_000)

    # when: alice signs in
    page.goto(f"{base}/accounts/login/")
    shot(page, "login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "pw-alice")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/org/{slug}/")

    # a device of the product connects
    device = SimulatedDevice(hub, secret.key, secret.secret)
    device.start()
    assert device.joined.wait(60), device.error

    # she uploads the firmware and sees it validated
    page.goto(f"{base}/org/{slug}/firmware/")
    page.select_option("select[name=product]", label="widget")
    page.set_input_files("input[name=file]", str(fw_path))
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#upload-result[data-status=valid]", timeout=120_000)
    assert "2.0.0" in page.inner_text("#upload-result")
    assert page.eval_on_selector("#upload-progress", "el => el.value") == 100
    page.reload()
    shot(page, "firmware")

    # she creates a deployment for it
    page.goto(f"{base}/org/{slug}/deployments/new/")
    page.select_option("select[name=product]", label="widget")
    page.fill("input[name=name]", "production")
    page.select_option("select[name=firmware]", index=1)
    shot(page, "deployment-form")
    with page.expect_navigation():
        page.click("form.stack button[type=submit]")
    page.wait_for_selector("#rollout")
    deployment_url = page.url
    page.goto(deployment_url + "preview/")
    assert "dev-browser-1" in page.inner_text("table")
    page.goto(deployment_url)

    # then: activating it updates the device, live on the rollout view
    with page.expect_navigation():
        page.click("button[value=activate]")
    assert page.inner_text("#rollout-state").startswith("active")
    assert device.updated.wait(150), device.error or hub.log()[-3000:]
    # The join and the update's outcome are two writes: wait until the view shows both.
    # A function, not an expression string: the page's Content-Security-Policy
    # forbids evaluating strings ('unsafe-eval'), as it should.
    page.wait_for_function(
        "() => document.querySelector('#rollout-percent').textContent === '100'"
        " && document.querySelector('td[data-status=\"succeeded\"]').textContent === '1'",
        timeout=60_000,
    )
    assert page.eval_on_selector("#rollout-bar", "el => el.value") == 100
    shot(page, "rollout")

    # the other main pages render for her too
    page.goto(f"{base}/org/{slug}/")
    shot(page, "dashboard")
    page.goto(f"{base}/org/{slug}/devices/")
    assert "dev-browser-1" in page.inner_text("table.devices")
    shot(page, "devices")
    with page.expect_navigation():
        page.click("table.devices >> text=dev-browser-1")
    assert page.inner_text("h1").startswith("dev-browser-1")
    assert "2.0.0" in page.inner_text("main")
    shot(page, "device")
    page.goto(f"{base}/org/{slug}/members/")
    with page.expect_navigation():
        page.click("text=Create invitation link")
    assert "/invitations/nhi_" in page.inner_text("#invite-link")
    shot(page, "members")
    page.goto(f"{base}/org/{slug}/audit/")
    assert "deployment.activated" in page.inner_text("main")
    shot(page, "audit")

    device.stop.set()
    device.join(10)
    assert device.error is None
    device.device.assert_no_violations()
