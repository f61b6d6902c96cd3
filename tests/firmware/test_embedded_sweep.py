"""Embedded mode has no Celery beat: the hub process runs the firmware sweep
itself, so an upload whose validation was lost with its process (kill -9
between the commit and the validation) does not stay pending for ever."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from firmware import services
from firmware.models import Firmware, FirmwareStatus
from firmware.tasks import FIRMWARE_SWEEP_AGE_SECONDS
from tests.devices.conftest import wait_until
from tests.support.fwup import build_firmware


@pytest.mark.slow
def test_an_upload_whose_validation_was_lost_is_validated_by_the_embedded_hub(
    live_hub: Any, tenant: Any, spec: Any, firmware_root: Any, settings: Any, monkeypatch: Any
) -> None:
    # given: an upload stored and committed whose validation never ran (the
    # process that took it died first), older than the sweep's age limit
    monkeypatch.setattr(services, "_dispatch_validation", lambda firmware_id: None)
    firmware = services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(build_firmware(spec)), "fw.fw")
    Firmware.objects.filter(pk=firmware.pk).update(
        created_at=timezone.now() - timedelta(seconds=FIRMWARE_SWEEP_AGE_SECONDS + 1)
    )

    # when: an embedded hub process starts (no device connects to it)
    live_hub(
        {
            "REDIS_URL": "",
            "FIRMWARE_ROOT": str(firmware_root),
            "SECRET_KEY": settings.SECRET_KEY,
            "FIRMWARE_SWEEP_SECONDS": "5",
        }
    )

    # then: its sweep validated the upload
    wait_until(lambda: Firmware.objects.get(pk=firmware.pk).status != FirmwareStatus.PENDING, timeout=90)
    assert Firmware.objects.get(pk=firmware.pk).status == FirmwareStatus.VALID
