"""Deployments: which firmware goes to which devices, and the record of every
update the hub asked a device to make."""

from __future__ import annotations

from typing import ClassVar

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from deployments.versions import InvalidRequirement
from deployments.versions import validate_requirement as _validate_requirement
from deployments.windows import validate_windows
from devices.fields import TagsField
from devices.models import Device, validate_tags
from firmware.models import DeltaFirmware, Firmware, FirmwareKind
from nerveshub.tenancy.models import Organization, Product


def validate_requirement(value: str) -> None:
    try:
        _validate_requirement(value)
    except InvalidRequirement as exc:
        raise ValidationError(f"Not a version requirement: {exc}") from None


class Preflight(models.TextChoices):
    WARN = "warn", "Warn"
    REFUSE = "refuse", "Refuse"


class Deployment(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="deployments")
    product = models.ForeignKey(Product, models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    # PROTECT: firmware a deployment points at cannot be deleted underneath it.
    firmware = models.ForeignKey(
        Firmware, models.PROTECT, related_name="deployments", limit_choices_to={"kind": FirmwareKind.FIRMWARE}
    )
    # Elixir every member runs on each join, before the device's own connecting code.
    connecting_code = models.TextField(blank=True)
    # Handed to the devices beside the firmware (`archive` message, device_api >= 2.0.0).
    archive = models.ForeignKey(
        Firmware,
        models.PROTECT,
        null=True,
        blank=True,
        related_name="archive_deployments",
        limit_choices_to={"kind": FirmwareKind.ARCHIVE},
    )
    conditions_tags = TagsField(
        default=list, blank=True, validators=[validate_tags], help_text="A device must have all of these tags."
    )
    conditions_version = models.CharField(
        max_length=200,
        blank=True,
        validators=[validate_requirement],
        help_text='Elixir Version requirement on the device\'s firmware, e.g. "~> 1.2".',
    )
    is_active = models.BooleanField(default=False)
    # Send devices a delta file when every condition holds, else the full file
    # (docs/firmware.md, "Delta updates").
    delta_updates = models.BooleanField(
        default=False,
        help_text="Send a device only what changed since its firmware, when its fwup can apply it.",
    )

    # Maintenance windows (deployments/windows.py): updates start only inside
    # one of them; none means any time.
    windows = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_windows],
        help_text='One per line: days, a local time range and a zone, e.g. "mon-fri 01:00-05:00 Europe/Berlin".',
    )
    # What activation does about devices that would not accept the firmware
    # (deployments/preflight.py, docs/rollout.md "Trust preflight").
    preflight = models.CharField(
        max_length=10,
        choices=Preflight.choices,
        default=Preflight.WARN,
        help_text="warn: activate and report devices that would refuse the firmware; "
        "refuse: do not activate while any would, and never push to such a device.",
    )

    concurrent_updates = models.PositiveIntegerField(default=10, validators=[MinValueValidator(1)])
    inflight_timeout_minutes = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    # Penalty box: this many failed attempts, or rate_attempts within rate_seconds,
    # block the device for penalty_minutes.
    penalty_attempts = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    penalty_rate_attempts = models.PositiveIntegerField(default=5, validators=[MinValueValidator(1)])
    penalty_rate_seconds = models.PositiveIntegerField(default=180, validators=[MinValueValidator(1)])
    penalty_minutes = models.PositiveIntegerField(default=1440, validators=[MinValueValidator(1)])
    # Circuit breaker: pause the deployment when failed devices reach this share
    # of at least breaker_min_attempts devices whose attempts finished (each
    # device counts once, however often it tried).
    breaker_failure_percent = models.PositiveIntegerField(
        default=20, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    breaker_min_attempts = models.PositiveIntegerField(default=10, validators=[MinValueValidator(1)])
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_reason = models.TextField(blank=True)
    # The breaker counts only attempts finished after the last resume.
    resumed_at = models.DateTimeField(null=True, blank=True)

    # Soak (deployments/soak.py, docs/rollout.md "Soak"): an attempt succeeds
    # only after the device ran the new firmware, validated, this long. 0: it
    # succeeds as soon as it is back on the firmware and validated.
    soak_minutes = models.PositiveIntegerField(
        default=0, help_text="Minutes a device must stay on the new firmware before its update counts as succeeded."
    )
    # Canary-versus-control gate (deployments/gate.py, docs/rollout.md).
    gate_enabled = models.BooleanField(
        default=False, help_text="Pause when updated devices do measurably worse than those not yet updated."
    )
    gate_margin_percent = models.PositiveIntegerField(
        default=5,
        validators=[MinValueValidator(0), MaxValueValidator(1000)],
        help_text="Tolerated excess: percentage points for shares, percent of the control's value for rates.",
    )
    gate_min_devices = models.PositiveIntegerField(
        default=20, validators=[MinValueValidator(2)], help_text="Devices each cohort needs before it is judged."
    )
    gate_metric = models.CharField(
        max_length=100,
        blank=True,
        validators=[
            RegexValidator(
                r"^(?!.*__)[A-Za-z0-9_.:-]*$", "Letters, digits and _ . : - only, without a double underscore."
            )
        ],
        help_text="A health metric to compare as well, e.g. cpu_temp.",
    )
    gate_metric_higher_is_worse = models.BooleanField(default=True)
    # The gate's last verdict with both cohorts' figures, shown on the page.
    gate_report = models.JSONField(default=dict, blank=True, editable=False)
    gate_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Health reports up to this id were folded into the gate's counters.
    gate_health_mark = models.BigIntegerField(default=0, editable=False)
    # A revert deployment (deployments/revert.py) points at the rollout it undoes.
    reverts = models.ForeignKey(
        "self", models.SET_NULL, null=True, blank=True, related_name="revert_deployments", editable=False
    )

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product__name", "name"]
        constraints = [models.UniqueConstraint(fields=["product", "name"], name="deployment_product_name_uniq")]
        indexes = [models.Index(fields=["product", "is_active"], name="deployment_product_active_idx")]

    def __str__(self) -> str:
        return self.name


class DeploymentStage(models.Model):
    """One step of a staged rollout: a canary of N devices or P %, then waves
    by cumulative percentage of the deployment's devices. Stages run in
    `position` order; each claims its members once, when it starts."""

    deployment = models.ForeignKey(Deployment, models.CASCADE, related_name="stages")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    size_count = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Devices in this stage (canary)."
    )
    size_percent = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Cumulative share of the deployment's devices reached at the end of this stage.",
    )
    concurrent_updates = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Default: the deployment's."
    )
    failure_percent = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text=(
            "Pause when this share of the stage's devices that finished their update failed. "
            "Default: the deployment's breaker."
        ),
    )
    soak_minutes = models.PositiveIntegerField(default=0, help_text="Wait after the previous stage completed.")
    requires_approval = models.BooleanField(default=False, help_text="Start only after an operator approves it.")
    windows = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_windows],
        help_text="Maintenance windows of this stage, replacing the deployment's while it runs.",
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "position"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "position"], name="stage_deployment_position_uniq"),
            models.CheckConstraint(
                condition=models.Q(size_count__isnull=False, size_percent__isnull=True)
                | models.Q(size_count__isnull=True, size_percent__isnull=False),
                name="stage_one_size",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment}: {self.name}"

    def clean(self) -> None:
        if (self.size_count is None) == (self.size_percent is None):
            raise ValidationError("Give either a device count or a percentage, not both.")


class StageMember(models.Model):
    """A device claimed by a stage. Claimed once per deployment and kept, so a
    device never moves between stages."""

    deployment = models.ForeignKey(Deployment, models.CASCADE, related_name="+")
    stage = models.ForeignKey(DeploymentStage, models.CASCADE, related_name="members")
    device = models.ForeignKey(Device, models.CASCADE, related_name="+")
    claimed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "device"], name="stagemember_deployment_device_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.device_id} in {self.stage_id}"


class UpdateStatus(models.TextChoices):
    REQUESTED = "requested", "Requested"
    RECEIVED = "received", "Received"
    STARTED = "started", "Downloading started"
    DOWNLOADING = "downloading", "Downloading"
    UPDATING = "updating", "Updating"
    COMPLETED = "completed", "Completed, awaiting reconnect"
    # Back on the new firmware and validated, waiting out the deployment's
    # soak time (deployments/soak.py). It holds no concurrency slot.
    SOAKING = "soaking", "Soaking"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    IGNORED = "ignored", "Ignored"
    RESCHEDULED = "rescheduled", "Rescheduled"
    EXPIRED = "expired", "Expired"
    # Cut short by the hub, not by the device (a push that never reached it, a
    # socket the hub lost): not a failure, and the device is offered the
    # update again (docs/rollout.md, "Rollout outcomes and the breaker").
    INTERRUPTED = "interrupted", "Interrupted by the hub"


# An update in one of these states holds one of its deployment's concurrency slots.
INFLIGHT_STATUSES = (
    UpdateStatus.REQUESTED,
    UpdateStatus.RECEIVED,
    UpdateStatus.STARTED,
    UpdateStatus.DOWNLOADING,
    UpdateStatus.UPDATING,
    UpdateStatus.COMPLETED,
)


class DeviceUpdateQuerySet(models.QuerySet["DeviceUpdate"]):
    def inflight(self) -> DeviceUpdateQuerySet:
        return self.filter(status__in=INFLIGHT_STATUSES)


class DeviceUpdate(models.Model):
    """One attempt to bring one device to one firmware. The row is the work item:
    the orchestrator claims a slot by inserting it, and every device status moves
    it along by compare-and-set."""

    device = models.ForeignKey(Device, models.CASCADE, related_name="updates")
    deployment = models.ForeignKey(Deployment, models.SET_NULL, null=True, blank=True, related_name="updates")
    firmware = models.ForeignKey(Firmware, models.PROTECT, related_name="device_updates")
    # The delta chosen when the update was claimed; every push of this update
    # sends it while it is ready. A failed attempt with a delta makes the next
    # one full (deployments/deltas.py).
    delta = models.ForeignKey(DeltaFirmware, models.SET_NULL, null=True, blank=True, related_name="device_updates")
    status = models.CharField(max_length=20, choices=UpdateStatus.choices, default=UpdateStatus.REQUESTED)
    progress = models.PositiveSmallIntegerField(default=0)
    reason = models.TextField(blank=True)
    # Set on the first status the device sends for this update: that is when an
    # attempt counts toward the penalty box.
    attempted_at = models.DateTimeField(null=True, blank=True)
    retry_after = models.DateTimeField(null=True, blank=True, help_text="Re-push after this (rescheduled).")
    # Every `update` push is a compare-and-set on `pushes` (rollout.push_updates,
    # rollout.push_pending_update): of two paths that decide to push at once, one
    # sends; and a socket that was sent the update is not sent it again.
    pushes = models.PositiveIntegerField(default=0, editable=False, help_text="How often `update` was sent.")
    pushed_channel = models.CharField(max_length=200, blank=True, editable=False)
    # The last push was handed to the channel layer (not only decided): a push
    # that was decided but never sent (its worker died in between) is sent again.
    push_sent = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The firmware the device ran when the attempt was claimed: what a revert
    # (deployments/revert.py) brings it back to. Null when the hub has no file
    # with the uuid the device reported.
    from_firmware = models.ForeignKey(
        Firmware, models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    # When the device was first seen running the new firmware, and until when it
    # soaks (SOAKING).
    booted_at = models.DateTimeField(null=True, blank=True, editable=False)
    soak_until = models.DateTimeField(null=True, blank=True, editable=False)
    # A failed attempt an operator forgave by clearing the device's penalty box
    # or enabling its updates again: it no longer counts toward the penalty box
    # (the record of the failure stays).
    forgiven_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects: ClassVar[DeviceUpdateQuerySet] = DeviceUpdateQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one update in flight per device: the database, not the
            # orchestrator's memory, makes a double push impossible.
            models.UniqueConstraint(
                fields=["device"],
                condition=models.Q(status__in=INFLIGHT_STATUSES),
                name="deviceupdate_one_inflight_per_device",
            ),
        ]
        indexes = [
            # Slot counting: inflight rows of one deployment.
            models.Index(fields=["deployment", "status"], name="deviceupdate_deploy_status_idx"),
            models.Index(fields=["device", "-created_at"], name="deviceupdate_device_time_idx"),
            # The soak sweep: soaking rows whose time is up.
            models.Index(
                fields=["soak_until"],
                condition=models.Q(status="soaking"),
                name="deviceupdate_soaking_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.device} → {self.firmware} ({self.status})"


class FwupKeysSent(models.Model):
    """A signing key the hub sent a device in `fwup_public_keys` (the device
    replaces its keys with each such message, so the rows are the last list
    sent). Trust preflight reads them: a device has a firmware's key when it
    was sent it or when its product declares it built in
    (deployments/preflight.py)."""

    device = models.ForeignKey(Device, models.CASCADE, related_name="+")
    key = models.CharField(max_length=100)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "fwup keys sent"
        constraints = [models.UniqueConstraint(fields=["device", "key"], name="fwupkeyssent_device_key_uniq")]

    def __str__(self) -> str:
        return f"{self.key[:8]}… to {self.device_id}"


class GateCounter(models.Model):
    """What the canary-versus-control gate counts for one device of one
    deployment, since `since`: from when the gate first saw the device (control)
    or from when the device booted the new firmware (canary, the counters start
    again then). Written by device events and folded health reports, read by one
    aggregate per gate evaluation (deployments/gate.py)."""

    deployment = models.ForeignKey(Deployment, models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, models.CASCADE, related_name="+")
    canary = models.BooleanField(default=False)
    since = models.DateTimeField(default=timezone.now)
    reconnects = models.PositiveIntegerField(default=0)
    auto_reverts = models.PositiveIntegerField(default=0)
    validation_failures = models.PositiveIntegerField(default=0)
    alarm_reports = models.PositiveIntegerField(default=0)
    metric_n = models.PositiveIntegerField(default=0)
    metric_sum = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "device"], name="gatecounter_deploy_device_uniq")]
        indexes = [models.Index(fields=["device"], name="gatecounter_device_idx")]

    def __str__(self) -> str:
        return f"{self.device_id} in {self.deployment_id} ({'canary' if self.canary else 'control'})"
