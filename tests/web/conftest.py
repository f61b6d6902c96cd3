from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devices.models import Device
from firmware.models import Firmware
from nerveshub.web.access import org_slug
from tests.conftest import REQUIRE_SERVICES, Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.hub import ROOT


@dataclass
class Fleet:
    tenant: Tenant
    slug: str
    device: Device
    firmware: Firmware
    deployment: Deployment


@pytest.fixture
def firmware_root(settings: Settings, tmp_path: Path) -> Path:
    root = tmp_path / "firmware"
    settings.STORAGES = {**settings.STORAGES, "firmware": {**settings.STORAGES["firmware"]}}
    settings.STORAGES["firmware"]["OPTIONS"] = {"location": str(root), "base_url": None}
    return root


@pytest.fixture
def fleet(tenant: Tenant) -> Fleet:
    firmware = make_firmware(tenant.product, "2.0.0")
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=firmware, concurrent_updates=3
    )
    device = make_device(tenant.product, "dev-001", version="1.0.0", tags=["beta"])
    DeviceUpdate.objects.create(
        device=device, deployment=deployment, firmware=firmware, status=UpdateStatus.FAILED, reason="disk full"
    )
    return Fleet(tenant=tenant, slug=org_slug(tenant.org), device=device, firmware=firmware, deployment=deployment)


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def fast_password_hashing(request: pytest.FixtureRequest, settings: Settings) -> None:
    """The personas' passwords are hashed once per test; the default PBKDF2
    rounds cost most of a page test's time. A live hub process checks
    passwords with its own settings, so tests that start one keep the default."""
    if "live_hub" not in request.fixturenames:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- A real browser (Debian's Chromium through Playwright) -----------------------------

CHROMIUM = Path("/usr/bin/chromium")
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


def _unavailable(reason: str) -> None:
    # CI must run these: a missing browser there is a failure, not a skip.
    if REQUIRE_SERVICES:
        pytest.fail(f"browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (requirements-dev.txt)")
    # Playwright's sync API keeps an event loop on this thread; fixtures torn
    # down while it runs may still touch the database synchronously.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shot(tmp_path: Path) -> Any:
    folder = ROOT / "docs" if os.environ.get("NERVESHUB_SCREENSHOTS") == "docs" else tmp_path

    def take(page: Any, name: str) -> None:
        page.screenshot(path=str(folder / f"pages-{name}.png"), full_page=True)

    return take
