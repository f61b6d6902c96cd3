from __future__ import annotations

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
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware


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
