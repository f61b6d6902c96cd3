"""Soak: an update counts as succeeded only after its device ran the new
firmware, validated, for the deployment's `soak_minutes` (docs/rollout.md,
"Soak").

An attempt enters `soaking` where it would have succeeded
(`services.success_fields`) and leaves it here:

* its soak time is up and the device is present (connected, or polling) on the
  target firmware → succeeded. A device that is away when its time is up stays
  soaking until it returns: the soak proves nothing about a device nobody hears;
* the device returns on another firmware, or says it auto-reverted → failed, a
  failure the penalty box, the breaker and the gate count.

A disconnect during the soak is no failure by itself; only what the device
runs when it returns is judged. Nothing sleeps: the rollout's runs and the
periodic backstop find soaks whose time is up (`due`), and a device's join
judges its own soak (`judge_join`). Every change is a compare-and-set on the
`soaking` status; deployments.rollout runs what follows an outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q

from deployments import services
from deployments.models import DeviceUpdate, UpdateStatus
from devices.models import Device, online_q

REVERTED = "the device left the new firmware during its soak (auto-revert)"
# Soaks ended per sweep: the next run or backstop takes the rest.
BATCH = 1000


@dataclass(frozen=True)
class Verdict:
    update_id: int
    deployment_id: int | None
    succeeded: bool


def _verdict(update: DeviceUpdate, device: Device, now: datetime, *, present: bool) -> Verdict | None:
    if device.firmware_uuid != update.firmware.uuid or device.firmware_auto_revert_detected:
        return Verdict(update.pk, update.deployment_id, succeeded=False)
    if update.soak_until is not None and update.soak_until <= now and present:
        return Verdict(update.pk, update.deployment_id, succeeded=True)
    return None


def due(now: datetime, deployment_id: int | None = None) -> list[Verdict]:
    """Soaking attempts whose time is up (of one deployment, or all), judged on
    what their devices run now. Soaks of devices that are away are left."""
    rows = (
        DeviceUpdate.objects.filter(status=UpdateStatus.SOAKING, soak_until__lte=now)
        .select_related("firmware", "device")
        .order_by("soak_until")
    )
    if deployment_id is not None:
        rows = rows.filter(deployment_id=deployment_id)
    present_ids = set(
        rows.filter(online_q(now, prefix="device__") | Q(device__polling_until__gt=now)).values_list("pk", flat=True)[
            :BATCH
        ]
    )
    verdicts = []
    for update in rows[:BATCH]:
        verdict = _verdict(update, update.device, now, present=update.pk in present_ids)
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def judge_join(
    update_id: int,
    deployment_id: int | None,
    target_uuid: str,
    soak_until: datetime | None,
    firmware_uuid: str,
    *,
    auto_reverted: bool,
    now: datetime,
) -> Verdict | None:
    """A device's join while its attempt `update_id` (to `target_uuid`) soaks,
    judged on what the caller read with the attempt (no query): back on
    another firmware, or auto-reverted, fails the soak; back on the target
    after the soak time ends it as succeeded; otherwise the soak goes on."""
    if auto_reverted or (firmware_uuid and firmware_uuid != target_uuid):
        return Verdict(update_id, deployment_id, succeeded=False)
    if firmware_uuid and soak_until is not None and soak_until <= now:
        return Verdict(update_id, deployment_id, succeeded=True)
    return None


def end(verdict: Verdict, now: datetime) -> bool:
    """Compare-and-set the soaking attempt to its outcome, audited. Returns
    whether this call ended it (the caller then runs what follows)."""
    fields: dict[str, Any] = {"finished_at": now, "updated_at": now}
    if verdict.succeeded:
        fields.update(status=UpdateStatus.SUCCEEDED, reason="")
    else:
        fields.update(status=UpdateStatus.FAILED, reason=REVERTED)
    with transaction.atomic():
        changed = DeviceUpdate.objects.filter(pk=verdict.update_id, status=UpdateStatus.SOAKING).update(**fields)
        if changed:
            services.audit_transition(verdict.update_id, fields)
    return bool(changed)
