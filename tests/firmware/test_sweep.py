"""An upload whose validation task never reached the broker (Redis away) is
stored, answered, and validated later by the periodic sweep."""

from __future__ import annotations

import io
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from firmware import services
from firmware.models import Firmware, FirmwareStatus
from firmware.tasks import FIRMWARE_SWEEP_AGE_SECONDS, sweep_pending_firmware, validate_firmware_task
from nerveshub.lib.enqueue import enqueue
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, build_firmware

pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def unreachable_broker(monkeypatch: pytest.MonkeyPatch) -> Celery:
    """The validation task bound to an app whose Redis broker refuses connections."""
    app = Celery("unreachable", broker=f"redis://127.0.0.1:{_closed_port()}/0")
    app.conf.task_always_eager = False
    monkeypatch.setattr(validate_firmware_task, "_app", app)
    return app


def test_enqueue_reports_an_unreachable_broker_quickly(unreachable_broker: Celery, caplog: Any) -> None:
    # when
    started = time.monotonic()
    sent = enqueue(validate_firmware_task, 123)
    # then: the caller goes on within a second, and the log says what was not sent
    assert sent is False
    assert time.monotonic() - started < 2
    assert "could not enqueue firmware.tasks.validate_firmware_task(123,)" in caplog.text


def test_an_upload_survives_an_unreachable_broker_and_the_sweep_validates_it(
    tenant: Tenant,
    spec: FirmwareSpec,
    firmware_root: Path,
    unreachable_broker: Celery,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given: an upload while the broker is away
    with django_capture_on_commit_callbacks(execute=True):
        firmware = services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(build_firmware(spec)), "fw.fw")
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.PENDING
    # when: the sweep runs while the upload is young, then once it is old, with
    # the broker back (a worker that runs the task in this process)
    young = services.stale_pending_firmware_ids(timedelta(seconds=FIRMWARE_SWEEP_AGE_SECONDS))
    Firmware.objects.filter(pk=firmware.pk).update(
        created_at=timezone.now() - timedelta(seconds=FIRMWARE_SWEEP_AGE_SECONDS + 1)
    )
    unreachable_broker.conf.task_always_eager = True  # tasks now run, here
    with django_capture_on_commit_callbacks(execute=True):
        sweep_pending_firmware()
    # then: only the old one was due, and the sweep's task validated it
    assert young == []
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.VALID
