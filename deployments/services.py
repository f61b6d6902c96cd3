"""Business rules for deployments and the updates they ask devices to make.

Device reports move a DeviceUpdate row by compare-and-set: the row's current
status is part of the UPDATE's WHERE clause, and the caller re-reads and retries
when another writer got there first.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from deployments.models import DeviceUpdate, UpdateStatus
from devices import publish
from nerveshub.tenancy.services import audit

logger = logging.getLogger(__name__)

# A device sends progress up to twice a second; same-status progress is written
# at most this often (value 100 is always written).
PROGRESS_WRITE_INTERVAL = timedelta(seconds=5)
_CAS_ATTEMPTS = 3
# Statuses that end an attempt without success (what follows, a hold, the penalty
# box or the circuit breaker, is decided in deployments.rollout).
_FINISHING = {UpdateStatus.FAILED, UpdateStatus.IGNORED, UpdateStatus.RESCHEDULED}
# What a device may report in `status_update` (docs/device-protocol.md §6): the
# outcomes the hub decides itself (succeeded, expired, interrupted, requested)
# are never taken from a device, which could otherwise free its slot and be
# audited as updated without running the firmware.
DEVICE_REPORTED = frozenset(
    {
        UpdateStatus.RECEIVED,
        UpdateStatus.STARTED,
        UpdateStatus.DOWNLOADING,
        UpdateStatus.UPDATING,
        UpdateStatus.COMPLETED,
        UpdateStatus.FAILED,
        UpdateStatus.IGNORED,
        UpdateStatus.RESCHEDULED,
    }
)
# The outcomes that are audited (and announced to webhooks) as update.succeeded / update.failed.
_OUTCOME_ACTIONS: dict[str, str] = {
    UpdateStatus.SUCCEEDED: "update.succeeded",
    UpdateStatus.FAILED: "update.failed",
    UpdateStatus.EXPIRED: "update.failed",
}


def audit_transition(update_id: int, fields: dict[str, Any]) -> None:
    """Audit what a compare-and-set just wrote to an update, in its transaction:
    the device's first report on it (update.started) and its outcome."""
    started = fields.get("attempted_at") is not None
    action = _OUTCOME_ACTIONS.get(str(fields.get("status", "")))
    if not started and action is None:
        return
    update = DeviceUpdate.objects.select_related("device", "firmware", "deployment").get(pk=update_id)
    details = {
        "update": update.pk,
        "deployment": update.deployment.name if update.deployment else None,
        "firmware": update.firmware.uuid,
        "version": update.firmware.version,
    }
    if started:
        audit(update.device, "update.started", update.device, details=details)
    if action is not None:
        audit(
            update.device, action, update.device, details={**details, "status": update.status, "reason": update.reason}
        )


def end_stale_update(update_id: int, status: str, now: datetime) -> bool:
    """End an in-flight attempt that made no progress within its timeout, by
    compare-and-set on the status it was read in. One the device never
    acknowledged was the hub's failure to deliver (the push was lost with a hub
    process, or the device was gone before it arrived), not the firmware's:
    interrupted, not failed, and the device is offered the update again when it
    is eligible. The others expired. Returns whether this call ended it."""
    fields: dict[str, Any] = {
        "status": UpdateStatus.EXPIRED,
        "reason": "no progress within the in-flight timeout",
        "finished_at": now,
    }
    if status == UpdateStatus.REQUESTED:
        fields.update(status=UpdateStatus.INTERRUPTED, reason="the device never acknowledged the update")
    with transaction.atomic():
        changed = DeviceUpdate.objects.filter(pk=update_id, status=status).update(**fields)
        if changed:
            audit_transition(update_id, fields)
    return bool(changed)


def success_fields(current: DeviceUpdate, now: datetime) -> dict[str, Any]:
    """What an attempt becomes when its device runs the target firmware and has
    validated it: succeeded, or soaking until the deployment's soak time has
    passed (docs/rollout.md, "Soak"; deployments/soak.py ends the soak)."""
    soak = current.deployment.soak_minutes if current.deployment is not None else 0
    fields: dict[str, Any] = {"progress": 100, "reason": "", "booted_at": current.booted_at or now}
    if soak:
        fields.update(status=UpdateStatus.SOAKING, soak_until=now + timedelta(minutes=soak))
    else:
        fields.update(status=UpdateStatus.SUCCEEDED, finished_at=now)
    return fields


def _target(payload: dict[str, Any], current: DeviceUpdate) -> dict[str, Any] | None:
    """The fields a status_update / fwup_progress payload sets, or None to skip."""
    now = timezone.now()
    if "status" in payload:
        status = str(payload["status"])
        reason = str(payload.get("reason") or "")
        if "fwup error" in status.lower():
            # Clients before 2.9 sent the error text as the status.
            status, reason = UpdateStatus.FAILED, status
        try:
            new = UpdateStatus(status)
        except ValueError:
            new = None
        if new not in DEVICE_REPORTED:
            logger.info("update %s: status %r is not one a device reports; ignored", current.pk, status)
            return None
        fields: dict[str, Any] = {"status": new}
        if new in _FINISHING:
            fields.update(reason=reason[:2000], finished_at=now)
        if new == UpdateStatus.RESCHEDULED:
            # delay_for is minutes (nerves_hub_link ≥ 2.9), at least 5. The
            # reference reads it as milliseconds; that is a bug we do not copy.
            minutes = max(5, int(payload.get("delay_for") or 5))
            fields["retry_after"] = now + timedelta(minutes=minutes)
        return fields
    value = int(payload["value"])
    stage = payload.get("stage")
    if stage is None:
        # Bare {value} from clients before 2.9.
        new = UpdateStatus.COMPLETED if value == 100 else UpdateStatus.UPDATING
    else:
        new = UpdateStatus(stage)
    if new == current.status and value != 100 and now - current.updated_at < PROGRESS_WRITE_INTERVAL:
        return None
    return {"status": new, "progress": value}


def record_update_status(device_id: int, payload: dict[str, Any]) -> DeviceUpdate | None:
    """Apply a device's `status_update` ({"status": ...}) or `fwup_progress`
    ({"value": N, "stage"?}) to its in-flight update. Returns the row as
    written, or None when there is nothing in flight or nothing to write."""
    for _ in range(_CAS_ATTEMPTS):
        current = DeviceUpdate.objects.inflight().filter(device_id=device_id).first()
        if current is None:
            logger.info("device %s reported %s with no update in flight", device_id, payload)
            return None
        fields = _target(payload, current)
        if fields is None:
            if "value" in payload and "status" not in payload:
                # Progress not written (PROGRESS_WRITE_INTERVAL) still shows live.
                publish.page_device_update(device_id, current.status, int(payload["value"]), current.deployment_id)
            return None
        if current.attempted_at is None:
            fields["attempted_at"] = timezone.now()
        fields["updated_at"] = timezone.now()
        with transaction.atomic():
            changed = DeviceUpdate.objects.filter(pk=current.pk, status=current.status).update(**fields)
            if changed:
                audit_transition(current.pk, fields)
                publish.page_device_update(
                    device_id, fields["status"], int(fields.get("progress", current.progress)), current.deployment_id
                )
        if changed:
            for name, value in fields.items():
                setattr(current, name, value)
            return current
    logger.warning("device %s: update status %s lost %d compare-and-set races", device_id, payload, _CAS_ATTEMPTS)
    return None


def reconcile_update_on_join(
    device_id: int,
    firmware_uuid: str,
    *,
    validated: bool | None = None,
    auto_reverted: bool = False,
    downloading_uuid: str | None = None,
    channel: str = "",
    closed_at: datetime | None = None,
) -> DeviceUpdate | None:
    """What a device's join says about its in-flight update. Returns the row when
    this call ended the attempt (so the caller runs the penalty box, breaker and
    wake-up), else None. `channel` is the socket the join came on, `closed_at`
    the last close of one of the device's sockets that the hub recorded
    (Device.disconnected_at). The rules (docs/rollout.md, "Rollout outcomes
    and the breaker"):

    * it runs the update's firmware and has validated it (or does not report
      validation) → succeeded; running it unvalidated → completed, and the
      `firmware_validated` event finishes it (see finish_validated_update);
    * a join on the very socket the update was pushed to is a topic rejoin after
      the hub's side of it crashed: the device has not reconnected, so not
      rebooted, and repeats what it said at connect → nothing changes;
    * it is still downloading the update's firmware → the attempt resumes: kept
      with its slot, not pushed again (a `requested` row becomes `received`:
      the device has it);
    * the update was only requested, never acknowledged → keep it (it is re-sent);
    * it came back on another firmware after an auto-revert, or on its old
      firmware after completing the update → failed / expired (failures);
    * it acknowledged the update and came back without it, and the hub never
      recorded the close of the socket it was last heard on (that socket's
      process died, or the hub lost it) → cut short by the hub: the attempt
      goes back to `requested` and is offered again on this socket, no failure;
    * otherwise (the hub saw the device's socket close and the device returned
      without the update: a power cut, a crash mid-download) → expired, a failure.
    """
    # A status report of the device's previous socket may still be on its way
    # (that socket is slower to drain than the device is to reboot): when it
    # moves the row first, the compare-and-set below misses and the join decides
    # again on what the row says now.
    for _ in range(5):
        settled, finished = _reconcile_once(
            device_id, firmware_uuid, validated, auto_reverted, downloading_uuid, channel, closed_at
        )
        if settled:
            return finished
    return None


def _reconcile_once(
    device_id: int,
    firmware_uuid: str,
    validated: bool | None,
    auto_reverted: bool,
    downloading_uuid: str | None,
    channel: str,
    closed_at: datetime | None,
) -> tuple[bool, DeviceUpdate | None]:
    """(False, None) when the row moved under the compare-and-set; else (True,
    the row if this call ended the attempt)."""
    current = (
        DeviceUpdate.objects.inflight().select_related("firmware", "deployment").filter(device_id=device_id).first()
    )
    if current is None:
        return True, None
    now = timezone.now()
    target = current.firmware.uuid
    fields: dict[str, Any]
    if firmware_uuid and firmware_uuid == target:
        if validated is False:
            if current.status == UpdateStatus.COMPLETED:
                return True, None
            fields = {
                "status": UpdateStatus.COMPLETED,
                "progress": 100,
                "reason": "awaiting firmware validation",
                "booted_at": current.booted_at or now,
            }
        else:
            fields = success_fields(current, now)
    elif channel and current.pushed_channel == channel:
        # A topic rejoin: the params are the ones of the socket's connect, older
        # than the push (device-protocol §1.7). Only a reboot changes the
        # firmware, and that takes a new connection.
        return True, None
    elif downloading_uuid and downloading_uuid == target:
        # Alive: the in-flight timeout and the lost-socket rule count from now.
        fields = {}
        if current.status == UpdateStatus.REQUESTED:
            fields = {"status": UpdateStatus.RECEIVED}
        if current.attempted_at is None:
            fields["attempted_at"] = now
    elif current.status == UpdateStatus.REQUESTED:
        return True, None
    elif auto_reverted:
        fields = {"status": UpdateStatus.FAILED, "finished_at": now, "reason": "the new firmware was auto-reverted"}
    elif current.status == UpdateStatus.COMPLETED:
        fields = {
            "status": UpdateStatus.EXPIRED,
            "finished_at": now,
            "reason": "device came back on its old firmware after completing the update",
        }
    elif closed_at is None or closed_at < current.updated_at:
        fields = {
            "status": UpdateStatus.REQUESTED,
            "progress": 0,
            "reason": "interrupted: the hub lost the device's socket; offered again",
        }
    else:
        fields = {"status": UpdateStatus.EXPIRED, "finished_at": now, "reason": "device rejoined without the update"}
    with transaction.atomic():
        changed = DeviceUpdate.objects.filter(pk=current.pk, status=current.status).update(updated_at=now, **fields)
        if changed:
            audit_transition(current.pk, fields)
            if "status" in fields:
                publish.page_device_update(
                    device_id, fields["status"], int(fields.get("progress", current.progress)), current.deployment_id
                )
    if not changed:
        return False, None
    if "finished_at" not in fields and fields.get("status") != UpdateStatus.SOAKING:
        return True, None
    for name, value in fields.items():
        setattr(current, name, value)
    return True, current


def finish_validated_update(device_id: int, firmware_uuid: str) -> DeviceUpdate | None:
    """The device validated the firmware it runs: a completed update to exactly
    that firmware succeeds now. Returns the row when this call finished it."""
    current = (
        DeviceUpdate.objects.filter(device_id=device_id, status=UpdateStatus.COMPLETED, firmware__uuid=firmware_uuid)
        .select_related("firmware", "deployment")
        .first()
    )
    if current is None:
        return None
    now = timezone.now()
    fields = {**success_fields(current, now), "updated_at": now}
    with transaction.atomic():
        if not DeviceUpdate.objects.filter(pk=current.pk, status=UpdateStatus.COMPLETED).update(**fields):
            return None
        audit_transition(current.pk, fields)
        publish.page_device_update(device_id, UpdateStatus.SUCCEEDED, current.progress, current.deployment_id)
    for name, value in fields.items():
        setattr(current, name, value)
    return current
