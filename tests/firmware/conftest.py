"""Fixtures for the firmware tests: an isolated firmware storage directory, a
registered signing key, and helpers that upload generated fwup files."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks, Settings

from firmware import services
from firmware.models import Firmware, SigningKey
from firmware.tasks import validate_firmware_task
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, KeyPair, Tamper, build_firmware, generate_keypair


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Settings) -> None:
    # The shared `tenant` fixture creates four users; PBKDF2 makes that ~1 s per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def firmware_root(settings: Settings, tmp_path: Path) -> Path:
    root = tmp_path / "firmware-store"
    root.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "firmware": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "base_url": None},
        },
    }
    return root


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def keypair(tenant: Tenant) -> KeyPair:
    pair = generate_keypair()
    SigningKey.objects.create(org=tenant.org, name="release", key=pair.public)
    return pair


@pytest.fixture
def spec(keypair: KeyPair) -> FirmwareSpec:
    return FirmwareSpec(product="widget", version="1.0.0", key=keypair)


Uploader = Callable[..., Firmware]


@pytest.fixture
def upload(
    tenant: Tenant, firmware_root: Path, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> Uploader:
    """Upload bytes (or a spec) and run the validation task as the worker would."""

    def _upload(data: bytes | FirmwareSpec, tamper: Tamper | None = None, product: Any = None) -> Firmware:
        if isinstance(data, FirmwareSpec):
            data = build_firmware(data, tamper)
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            firmware = services.upload_firmware(tenant.admin, product or tenant.product, io.BytesIO(data), "fw.fw")
        assert len(callbacks) == 1  # the validation task is dispatched on commit
        with django_capture_on_commit_callbacks(execute=True):
            validate_firmware_task(firmware.pk)
        firmware.refresh_from_db()
        return firmware

    return _upload
