"""Delta updates of a deployment (docs/firmware.md, "Delta updates"): which
deltas its devices need, and whether a device is sent one.

A device gets the delta only when every condition holds, else the full file:
the deployment has delta updates on; the hub has xdelta3; the device's firmware
(by uuid) is a firmware of the product with a `ready` delta to the target; the
device reported an fwup at least as new as the delta needs (a missing version
is too old); and no earlier attempt of the device at this target with a delta
failed. The choice is made when the update is claimed and recorded on the
DeviceUpdate, so every push of one update sends the same file.

rollout.py calls this module; it imports nothing from rollout.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import transaction
from django.db.models import Count

from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devices.models import Device
from firmware import deltas as firmware_deltas
from firmware.models import DeltaFirmware, DeltaStatus
from nerveshub.lib.enqueue import enqueue

logger = logging.getLogger(__name__)

# An attempt that ended in one of these with a delta makes the next one full.
_FAILED = (UpdateStatus.FAILED, UpdateStatus.EXPIRED)


@dataclass(frozen=True)
class Delivery:
    delta: DeltaFirmware | None
    why_full: str  # "" when the delta is sent

    @property
    def label(self) -> str:
        if self.delta is not None:
            return f"delta ({self.delta.size:,} bytes)"
        return f"full: {self.why_full}"


def plan(deployment: Deployment, devices: Iterable[Device]) -> dict[int, Delivery]:
    """What each device would be sent, by device id. Two queries for any number
    of devices (the ready deltas, and earlier failed delta attempts)."""
    devices = list(devices)
    if not deployment.delta_updates:
        return {d.pk: Delivery(None, "delta updates are off") for d in devices}
    if not firmware_deltas.deltas_available():
        return {d.pk: Delivery(None, "deltas are unavailable (no xdelta3)") for d in devices}
    target = deployment.firmware
    ready = firmware_deltas.ready_deltas(target, (d.firmware_uuid for d in devices))
    failed = set(
        DeviceUpdate.objects.filter(
            device_id__in=[d.pk for d in devices], firmware=target, delta__isnull=False, status__in=_FAILED
        ).values_list("device_id", flat=True)
    )
    out: dict[int, Delivery] = {}
    for device in devices:
        row = ready.get(device.firmware_uuid)
        if row is None:
            out[device.pk] = Delivery(None, "no ready delta from its firmware")
        elif not firmware_deltas.fwup_at_least(device.fwup_version, row.fwup_version):
            out[device.pk] = Delivery(None, f"fwup {device.fwup_version or 'unknown'} < {row.fwup_version}")
        elif device.pk in failed:
            out[device.pk] = Delivery(None, "a delta update failed on it before")
        else:
            out[device.pk] = Delivery(row, "")
    return out


def chosen_deltas(deployment: Deployment, devices: list[Device]) -> dict[int, DeltaFirmware]:
    """The delta to record on each device's new update, by device id."""
    return {pk: d.delta for pk, d in plan(deployment, devices).items() if d.delta is not None}


def delta_payloads(update_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The `update` payload of each of these updates that carries a ready delta,
    by update id; the others are sent the full file."""
    ids = list(update_ids)
    if not ids or not firmware_deltas.deltas_available():
        return {}
    rows = DeviceUpdate.objects.filter(pk__in=ids, delta__status=DeltaStatus.READY).select_related(
        "delta__target__product"
    )
    return {u.pk: dict(firmware_deltas.delta_payload(u.delta, u.deployment_id)) for u in rows if u.delta is not None}


def pairs(deployment: Deployment) -> list[DeltaFirmware]:
    """The deltas to the deployment's firmware, for its page and the API."""
    return list(
        DeltaFirmware.objects.filter(target_id=deployment.firmware_id)
        .select_related("source", "target")
        .order_by("-created_at")[:50]
    )


def request_for_deployment(deployment_id: int) -> int:
    """Ask for the deltas from the firmware its devices run to its target (an
    active deployment with delta updates on only). Returns the rows created."""
    deployment = Deployment.objects.select_related("firmware").filter(pk=deployment_id).first()
    if deployment is None or not deployment.is_active or not deployment.delta_updates:
        return 0
    target = deployment.firmware
    common = (
        Device.objects.filter(deployment_id=deployment.pk, deleted_at__isnull=True)
        .exclude(firmware_uuid="")
        .exclude(firmware_uuid=target.uuid)
        .values("firmware_uuid")
        .annotate(n=Count("pk"))
        .order_by("-n", "firmware_uuid")
        .values_list("firmware_uuid", flat=True)[: firmware_deltas.MAX_SOURCES]
    )
    with transaction.atomic():
        return len(firmware_deltas.request_deltas(target, list(common)))


def request_on_commit(deployment: Deployment) -> None:
    """After a change that may need new deltas (a new target, activation,
    delta updates turned on): request them once the change is committed."""
    if deployment.delta_updates and deployment.is_active:
        transaction.on_commit(partial(_dispatch, deployment.pk))


def _dispatch(deployment_id: int) -> None:
    # Imported when called: deployments.tasks imports this module.
    from deployments.tasks import request_deltas_task

    try:
        enqueue(request_deltas_task, deployment_id)
    except Exception:
        # In embedded mode the request runs right here, after the operator's
        # change committed: the sweep asks again (deployments.tasks.request_all_deltas).
        logger.exception("deployment %s: deltas were not requested; the sweep will", deployment_id)
