"""Manual updates: an operator pushes one chosen firmware to one device now,
outside any deployment (docs/rollout.md, "Manual updates").

The attempt is an ordinary DeviceUpdate row with no deployment. It goes
through the same push path as the orchestrator's claims
(rollout.push_updates: compare-and-set on `pushes`, sent after commit) and
the device's reports settle it exactly like a deployment's attempt
(deployments.services). Having no deployment, it never takes a deployment's
concurrency slot, never counts toward a breaker or a penalty box, and is
expired by the periodic sweep (expire_stale_manual_updates) rather than by a
deployment's run. While it is in flight the device holds an in-flight row, so
the orchestrator leaves the device alone (eligible_devices, and the one
in-flight update per device index).

Rules an operator's push skips on purpose, as NervesHub's own does: the
device's `updates_enabled` flag and its penalty box stop the orchestrator,
not a person choosing this firmware for this device.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments import rollout, services
from deployments.models import INFLIGHT_STATUSES, DeviceUpdate
from devices.models import Device
from firmware.models import Firmware, FirmwareKind, FirmwareStatus
from firmware.services import update_payload
from nerveshub.tenancy.services import Actor, audit

logger = logging.getLogger(__name__)

# How long a manual update may go without progress before the sweep ends it:
# a deployment's default in-flight timeout.
MANUAL_INFLIGHT_TIMEOUT = timedelta(minutes=30)


class UpdateRefused(Exception):
    """The push was not sent; `reason` is a sentence for the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def manual_update_problem(device: Device, firmware: Firmware) -> str:
    """Why `firmware` cannot be pushed to `device` now (empty: it can). The
    page's form and every adapter show the same sentence."""
    if firmware.org_id != device.org_id or firmware.product_id != device.product_id:
        return f"Firmware {firmware.uuid} belongs to another product than {device.identifier}."
    if firmware.kind != FirmwareKind.FIRMWARE:
        return f"{firmware.uuid} is an archive, not firmware."
    if firmware.status != FirmwareStatus.VALID:
        return f"Firmware {firmware.uuid} is not validated ({firmware.get_status_display().lower()})."
    if device.deleted_at is not None:
        return f"{device.identifier} is deleted."
    if not device.online or not device.socket_channel:
        return f"{device.identifier} is not connected; a manual update is not queued."
    return ""


def send_update(actor: Actor, device: Device, firmware: Firmware) -> DeviceUpdate:
    """Push `firmware` (the full file) to `device` now. Returns the
    `requested` DeviceUpdate row, which the device's reports then move along.
    Raises UpdateRefused with the reason, and writes nothing, when the
    firmware or the device does not allow it or an update is already in
    flight for the device."""
    problem = manual_update_problem(device, firmware)
    if problem:
        raise UpdateRefused(problem)
    with transaction.atomic():
        # Read again under the row lock: a delete or a disconnect that
        # committed since the caller loaded the device wins.
        locked = (
            Device.objects.select_for_update(no_key=True, of=("self",))
            .select_related("hub_lease")
            .filter(pk=device.pk)
            .first()
        )
        problem = "" if locked is not None else f"{device.identifier} is deleted."
        problem = problem or manual_update_problem(locked, firmware)  # type: ignore[arg-type]
        if problem:
            raise UpdateRefused(problem)
        try:
            # The savepoint keeps the caller's transaction usable when the
            # one-in-flight index refuses the row.
            with transaction.atomic():
                update = DeviceUpdate.objects.create(device=device, deployment=None, firmware=firmware)
        except IntegrityError:
            update = None
        if update is None:
            raise UpdateRefused(
                f"{device.identifier} already has an update in flight; wait for it to finish or expire."
            )
        audit(
            actor,
            "update.requested",
            device,
            details={"deployment": None, "firmware": firmware.uuid, "version": firmware.version, "update": update.pk},
        )
        rollout.push_updates([(update.pk, 0)], dict(update_payload(firmware)))
    return update


def expire_stale_manual_updates(now: datetime | None = None) -> int:
    """End manual updates that made no progress within MANUAL_INFLIGHT_TIMEOUT,
    as a deployment's run does for its own (rollout.expire_stale_updates): one
    the device never acknowledged was the hub's failure to deliver
    (interrupted), the others expired. Returns how many ended."""
    now = now or timezone.now()
    stale = list(
        DeviceUpdate.objects.filter(
            deployment__isnull=True, status__in=INFLIGHT_STATUSES, updated_at__lt=now - MANUAL_INFLIGHT_TIMEOUT
        )
        .order_by("pk")
        .values_list("pk", "status")
    )
    ended = sum(services.end_stale_update(update_id, status, now) for update_id, status in stale)
    if ended:
        logger.info("ended %d stale manual update(s)", ended)
    return ended
