"""Archives: the extra signed fwup file a deployment hands its devices beside the
firmware (device_api >= 2.0.0). The device's ArchiveManager decides what to do
with it; the hub only offers it, on every join and when the deployment's archive
changes, to devices that may receive updates."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from deployments.models import Deployment
from devices import publish
from devices.models import Device, online_q
from firmware.models import FirmwareStatus
from firmware.services import archive_payload
from nerveshub.lib.semver import parse_semver
from nerveshub.tenancy.services import Actor, audit

logger = logging.getLogger(__name__)

# The first device API that knows the `archive` message.
ARCHIVE_API = (2, 0, 0)


def _supports_archives(device_api_version: str) -> bool:
    return (parse_semver(device_api_version) or (1, 0, 0)) >= ARCHIVE_API


def push_archive_on_join(device_id: int, *, seen: Device | None = None) -> bool:
    """Offer the device its deployment's archive (`seen`: the device as just
    read, with its deployment's archive). Returns whether one was sent."""
    device = seen or (
        Device.objects.select_related("deployment__archive__product")
        .filter(pk=device_id, deleted_at__isnull=True)
        .first()
    )
    if device is None or device.deleted_at is not None:
        return False
    if device.deployment is None or device.deployment.archive is None:
        return False
    archive = device.deployment.archive
    if archive.status != FirmwareStatus.VALID or not _supports_archives(device.device_api_version):
        return False
    if not device.updates_enabled or (device.penalty_box_until and device.penalty_box_until > timezone.now()):
        return False
    with transaction.atomic():
        publish.send_to_device(device.pk, "archive", dict(archive_payload(archive)))
    return True


def push_archive_to_members(actor: Actor, deployment: Deployment) -> int:
    """After the deployment's archive changed: offer it to its connected devices
    (one fleet message per server process). Returns how many devices it targets."""
    archive = deployment.archive
    if archive is None or archive.status != FirmwareStatus.VALID:
        return 0
    now = timezone.now()
    rows = (
        Device.objects.filter(
            online_q(now),
            deployment=deployment,
            deleted_at__isnull=True,
            updates_enabled=True,
        )
        .filter(Q(penalty_box_until__isnull=True) | Q(penalty_box_until__lte=now))
        .values_list("pk", "device_api_version")
    )
    ids = [pk for pk, api in rows.iterator(chunk_size=2000) if _supports_archives(api)]
    with transaction.atomic():
        audit(
            actor,
            "deployment.archive_offered",
            deployment,
            details={"archive": archive.uuid, "version": archive.version, "devices": len(ids)},
        )
        if ids:
            publish.broadcast_to_devices(ids, "archive", dict(archive_payload(archive)))
    return len(ids)
