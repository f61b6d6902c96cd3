"""Trust preflight: will a device accept the deployment's firmware?
(docs/rollout.md, "Trust preflight")

A device refuses a firmware file, after downloading it, when

* it does not have the key that signed the file: it trusts the keys the hub
  last sent it in `fwup_public_keys` (recorded in FwupKeysSent when the join
  sends them) and the keys its product declares built into its images
  (`Product.builtin_keys`);
* its fwup is older than the file's `require-fwup-version`;
* the file is for another platform or architecture (such a device never
  belongs to the deployment, so it would wait for ever unnoticed).

The deployment's `preflight` setting says what follows: `warn` activates and
reports the devices and their reasons (the operator accepts that they will
fail); `refuse` does not activate while any matching device would refuse the
firmware, and never claims an update for a device that would (a device that
joins or changes later), the reason shown in the preview.

This module reads; it writes only the record of keys sent. It imports
nothing from rollout.py, which calls it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from deployments.models import Deployment, FwupKeysSent, Preflight
from deployments.versions import InvalidRequirement, Requirement, parse_version
from devices.models import Device

# How many reasons an activation's warning or refusal quotes.
QUOTED = 5


def record_keys_sent(device_id: int, keys: Iterable[str]) -> None:
    """The join sent the device these `fwup_public_keys`: they replace what it
    was sent before (the device replaces its keys too). Writes only when the
    list changed, so a device that asks on every connect costs one read."""
    wanted = {"".join(k.split()) for k in keys}
    if not wanted:
        return  # nothing is sent for an empty list, and the device keeps its keys
    held = set(FwupKeysSent.objects.filter(device_id=device_id).values_list("key", flat=True))
    if held == wanted:
        return
    with transaction.atomic():
        FwupKeysSent.objects.filter(device_id=device_id).exclude(key__in=wanted).delete()
        now = timezone.now()
        FwupKeysSent.objects.bulk_create(
            [FwupKeysSent(device_id=device_id, key=k, sent_at=now) for k in sorted(wanted - held)],
            ignore_conflicts=True,
        )


def _signing_key(deployment: Deployment) -> str:
    """The signing key devices must have, "" when none is required: the
    product declares it built in, or the file names no key."""
    key = deployment.firmware.signing_key
    if key is None:
        return ""
    if deployment.product.builtin_keys.filter(pk=key.pk).exists():
        return ""
    return key.key


def _fwup_problem(required: str, reported: str) -> str:
    if not required:
        return ""
    if not reported:
        return f"fwup version not reported (the firmware requires {required} or later)"
    version = parse_version(reported)
    wanted = parse_version(required)
    if version is None or wanted is None:
        return f"fwup {reported} cannot be compared with the required {required}"
    if version < wanted:
        return f"fwup {reported} is older than the firmware's require-fwup-version {required}"
    return ""


def _matches_conditions(deployment: Deployment, device: Device) -> bool:
    """The deployment's own conditions (tags, version), without the platform
    and architecture, which preflight reports rather than filters on."""
    if any(tag not in device.tags for tag in deployment.conditions_tags):
        return False
    if deployment.conditions_version.strip():
        try:
            return Requirement.parse(deployment.conditions_version).matches(device.firmware_version)
        except InvalidRequirement:
            return False
    return True


@dataclass
class Report:
    """Devices that match the deployment's conditions and would refuse its
    firmware, with the reasons, by device id."""

    mode: str
    checked: int = 0
    reasons: dict[int, list[str]] = field(default_factory=dict)
    identifiers: dict[int, str] = field(default_factory=dict)

    @property
    def refusing(self) -> int:
        return len(self.reasons)

    def summary(self) -> str:
        """One sentence for an activation's answer ("" when nothing to say)."""
        if not self.reasons:
            return ""
        quoted = "; ".join(
            f"{self.identifiers[pk]}: {', '.join(problems)}" for pk, problems in list(self.reasons.items())[:QUOTED]
        )
        more = f" (and {self.refusing - QUOTED} more)" if self.refusing > QUOTED else ""
        return (
            f"{self.refusing} of {self.checked} matching device(s) would refuse this firmware: {quoted}{more}. "
            "See the preview."
        )


def check(deployment: Deployment, devices: Iterable[Device] | None = None) -> Report:
    """Preflight the product's devices (or `devices`) that match the
    deployment's conditions and have reported their firmware."""
    report = Report(mode=deployment.preflight)
    firmware = deployment.firmware
    if devices is None:
        devices = Device.objects.filter(product_id=deployment.product_id, deleted_at__isnull=True).exclude(
            firmware_uuid=""
        )
    # A device already on the firmware needs nothing from it.
    candidates = [
        d
        for d in devices
        if d.firmware_uuid and d.firmware_uuid != firmware.uuid and _matches_conditions(deployment, d)
    ]
    key = _signing_key(deployment)
    have_key: set[int] = set()
    if key:
        have_key = set(
            FwupKeysSent.objects.filter(device_id__in=[d.pk for d in candidates], key=key).values_list(
                "device_id", flat=True
            )
        )
    for device in candidates:
        report.checked += 1
        problems = device_problems(deployment, device, key_missing=bool(key) and device.pk not in have_key)
        if problems:
            report.reasons[device.pk] = problems
            report.identifiers[device.pk] = device.identifier
    return report


def device_problems(deployment: Deployment, device: Device, *, key_missing: bool) -> list[str]:
    firmware = deployment.firmware
    problems = []
    if key_missing and firmware.signing_key is not None:
        problems.append(f"does not have the signing key {firmware.signing_key.name}")
    fwup = _fwup_problem(firmware.require_fwup_version, device.fwup_version)
    if fwup:
        problems.append(fwup)
    if device.firmware_platform and device.firmware_platform != firmware.platform:
        problems.append(f"platform {device.firmware_platform} ≠ the firmware's {firmware.platform}")
    if device.firmware_architecture and device.firmware_architecture != firmware.architecture:
        problems.append(f"architecture {device.firmware_architecture} ≠ the firmware's {firmware.architecture}")
    return problems


def refuse_activation(deployment: Deployment) -> None:
    """Before an activation: raise ValidationError when the deployment refuses
    and a matching device would refuse its firmware. Under warn nothing is
    checked here: the adapters show check(...).summary() after activating."""
    if deployment.preflight != Preflight.REFUSE:
        return
    report = check(deployment)
    if report.reasons:
        raise ValidationError({"preflight": [f"Not activated: {report.summary()}"]})


def exclude_refused(deployment: Deployment, devices: QuerySet[Device]) -> QuerySet[Device]:
    """Under `refuse`, leave out the devices that would refuse the firmware
    (the platform and architecture are membership's already). Two reads at
    most; none under `warn`."""
    if deployment.preflight != Preflight.REFUSE:
        return devices
    key = _signing_key(deployment)
    if key:
        devices = devices.filter(Exists(FwupKeysSent.objects.filter(device_id=OuterRef("pk"), key=key)))
    required = deployment.firmware.require_fwup_version
    if required:
        reported = (
            Device.objects.filter(deployment=deployment).order_by().values_list("fwup_version", flat=True).distinct()
        )
        too_old = [v for v in reported if _fwup_problem(required, v)]
        if too_old:
            devices = devices.exclude(fwup_version__in=too_old)
    return devices


class PreviewLine(Protocol):
    device: Device
    eligible: bool
    problems: list[str]


def explain(deployment: Deployment, rows: Sequence[PreviewLine]) -> dict[int, list[str]]:
    """The preview's preflight column: reasons by device id. Under `refuse`
    they also make the device ineligible."""
    report = check(deployment, [row.device for row in rows])
    if deployment.preflight == Preflight.REFUSE:
        for row in rows:
            reasons = report.reasons.get(row.device.pk)
            if reasons:
                row.problems.extend(f"refused by preflight: {r}" for r in reasons)
                row.eligible = False
    return report.reasons
