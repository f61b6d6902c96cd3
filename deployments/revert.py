"""One-click revert (docs/rollout.md, "Reverting a rollout"): the devices a
paused or stopped rollout put on its firmware go back to the firmware each ran
before, as new deployments that point at the old one (`Deployment.reverts`)
and roll out like any other: the same pacing, penalty box, breaker, soak and
gate settings.

Each attempt records the firmware its device ran when it was claimed
(`DeviceUpdate.from_firmware`). Devices that ran different firmware before get
one revert deployment per previous firmware. A deployment has one firmware and
membership by conditions, so a revert deployment requires the version the
devices run now (`== <version>`, so it can never take a device elsewhere) and
the reverted devices are assigned to it directly; membership keeps a device in
its current deployment while it matches, so each stays in its own. A device
on that version that the rollout did not update (none is recorded for it) may
join one of them when it next has no deployment, as any device joins the best
matching deployment. Devices whose previous firmware the hub has no valid file
for are left where they are, and counted in the answer.

The old deployment keeps its state: a paused one stays active and paused, so
the devices that are not reverted stay in it and get nothing, and a device on
its firmware with no deployment joins it (it ranks first: the highest version)
rather than a revert deployment. Only a stopped (inactive) rollout lets such a
device join a revert deployment. A reverted device back on its old firmware no
longer matches its revert deployment and joins the best match, which is the
old deployment again if it is active: resuming a reverted rollout updates the
devices again, and is the operator's explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devices.models import Device
from firmware.models import Firmware, FirmwareStatus
from nerveshub.tenancy.services import Actor, audit

# What a revert deployment copies from the rollout it reverts.
COPIED = rollout.SETTINGS_FIELDS


class RevertRefused(Exception):
    """The deployment may not be reverted (the message says why)."""


@dataclass
class RevertPlan:
    groups: dict[int, list[int]] = field(default_factory=dict)  # previous firmware id -> device ids
    unknown: list[int] = field(default_factory=list)  # devices with no revertible previous firmware


@dataclass
class RevertResult:
    deployments: list[Deployment]
    devices: int
    left: int  # devices left where they are (no previous firmware to go back to)


def plan(deployment: Deployment) -> RevertPlan:
    """Which devices the rollout put on its firmware and still run it, grouped
    by the firmware each ran before."""
    updated = (
        DeviceUpdate.objects.filter(
            deployment=deployment,
            firmware_id=deployment.firmware_id,
            status__in=(UpdateStatus.SUCCEEDED, UpdateStatus.SOAKING),
            device__deleted_at__isnull=True,
            device__firmware_uuid=deployment.firmware.uuid,
        )
        .order_by("device_id", "-pk")
        .values_list("device_id", "from_firmware_id", "from_firmware__status")
    )
    result = RevertPlan()
    seen: set[int] = set()
    for device_id, previous, status in updated:
        if device_id in seen:
            continue  # the latest attempt of the device says what it ran before
        seen.add(device_id)
        if previous is None or previous == deployment.firmware_id or status != FirmwareStatus.VALID:
            result.unknown.append(device_id)
        else:
            result.groups.setdefault(previous, []).append(device_id)
    return result


def _name(deployment: Deployment, firmware: Firmware) -> str:
    base = f"{deployment.name[:60]} revert to {firmware.version}"[:95]
    name, n = base, 1
    while Deployment.objects.filter(product_id=deployment.product_id, name=name).exists():
        n += 1
        name = f"{base} ({n})"
    return name


def refusal(deployment: Deployment) -> str:
    """Why the deployment may not be reverted now ("" when it may)."""
    if deployment.is_active and deployment.paused_at is None:
        return "the rollout is running: pause or deactivate it before reverting it"
    if deployment.revert_deployments.exists():
        return "the rollout was reverted already"
    return ""


def revert(actor: Actor, deployment: Deployment, *, via: str) -> RevertResult:
    """Start reverting a paused or stopped rollout. Raises RevertRefused."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().select_related("firmware").filter(pk=deployment.pk).first()
        if locked is None:
            raise RevertRefused("the deployment is gone")
        reason = refusal(locked)
        if reason:
            raise RevertRefused(reason)
        found = plan(locked)
        if not found.groups:
            raise RevertRefused(
                "no device it updated can be reverted (none still runs its firmware with a known previous one)"
            )
        created = []
        firmwares = Firmware.objects.in_bulk(list(found.groups))
        for firmware_id, device_ids in sorted(found.groups.items()):
            firmware = firmwares[firmware_id]
            target = Deployment(
                org_id=locked.org_id,
                product_id=locked.product_id,
                name=_name(locked, firmware),
                firmware=firmware,
                conditions_version=f"== {locked.firmware.version}",
                conditions_tags=[],
                reverts=locked,
                **{name: getattr(locked, name) for name in COPIED},
            )
            rollout.save_deployment(actor, target, ["name", "firmware", "conditions_version", *COPIED], via=via)
            Device.objects.filter(pk__in=device_ids).update(deployment=target)
            created.append(target)
        # All of them active at once, before membership is recomputed: a
        # device pinned to one still inactive would be moved to another.
        for target in created:
            Deployment.objects.filter(pk=target.pk).update(is_active=True, updated_at=timezone.now())
            target.is_active = True
            audit(actor, "deployment.activated", target, details={"via": via})
        moved = sum(len(ids) for ids in found.groups.values())
        audit(
            actor,
            "deployment.reverted",
            locked,
            details={
                "via": via,
                "devices": moved,
                "left": len(found.unknown),
                "deployments": [d.name for d in created],
            },
        )
    rollout.reassign_product(locked.product_id, actor)
    with transaction.atomic():
        for target in created:
            rollout.wake(target.pk)
    return RevertResult(deployments=created, devices=moved, left=len(found.unknown))
