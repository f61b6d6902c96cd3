"""Signing keys and signed firmware files."""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from nerveshub.tenancy.models import Organization, Product


def decode_ed25519_key(text: str) -> bytes:
    """Base64 (padded or not, as `fwup -g` writes) of a raw 32-byte public key."""
    cleaned = "".join(text.split())
    try:
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("Not base64: paste the contents of fwup-key.pub.") from None
    if len(raw) != 32:
        raise ValidationError(f"An ed25519 public key is 32 bytes; this one is {len(raw)}.")
    return raw


def validate_ed25519_key(text: str) -> None:
    decode_ed25519_key(text)


class SigningKey(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="signing_keys")
    name = models.CharField(max_length=100)
    key = models.CharField(
        max_length=100, validators=[validate_ed25519_key], help_text="Base64 ed25519 public key (fwup-key.pub)."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["org__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["org", "name"], name="signingkey_org_name_uniq"),
            models.UniqueConstraint(fields=["org", "key"], name="signingkey_org_key_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.org.name}/{self.name}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A malformed key would make every firmware of the org unverifiable; refuse
        # it on every path, not only through forms.
        self.key = "".join(self.key.split())
        validate_ed25519_key(self.key)
        super().save(*args, **kwargs)

    @property
    def raw(self) -> bytes:
        return decode_ed25519_key(self.key)


class FirmwareStatus(models.TextChoices):
    PENDING = "pending", "Pending validation"
    VALID = "valid", "Valid"
    REJECTED = "rejected", "Rejected"


class FirmwareKind(models.TextChoices):
    # An archive is a fwup file too (same signing keys, same validation), which a
    # deployment hands to its devices beside the firmware (device_api >= 2.0.0).
    FIRMWARE = "firmware", "Firmware"
    ARCHIVE = "archive", "Archive"


class FirmwareQuerySet(models.QuerySet["Firmware"]):
    def valid(self) -> FirmwareQuerySet:
        return self.filter(status=FirmwareStatus.VALID)

    def firmware(self) -> FirmwareQuerySet:
        return self.filter(kind=FirmwareKind.FIRMWARE)

    def archives(self) -> FirmwareQuerySet:
        return self.filter(kind=FirmwareKind.ARCHIVE)


class Firmware(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="firmware")
    product = models.ForeignKey(Product, models.PROTECT, related_name="firmware")
    kind = models.CharField(max_length=10, choices=FirmwareKind.choices, default=FirmwareKind.FIRMWARE)
    # Set by validation: fwup derives it from meta.conf (docs/fwup-format.md §4), so it is
    # unknown until the file has been read.
    uuid = models.CharField(max_length=36, null=True, blank=True)
    version = models.CharField(max_length=100, blank=True)
    platform = models.CharField(max_length=100, blank=True)
    architecture = models.CharField(max_length=100, blank=True)
    author = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    vcs_identifier = models.CharField(max_length=200, blank=True)
    misc = models.TextField(blank=True)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    partial_sha256 = models.JSONField(default=list, blank=True, help_text="SHA-256 of each 1 MiB part.")
    storage_name = models.CharField(max_length=300, blank=True)
    original_filename = models.CharField(max_length=300, blank=True)
    status = models.CharField(max_length=10, choices=FirmwareStatus.choices, default=FirmwareStatus.PENDING)
    rejected_reason = models.TextField(blank=True)
    # PROTECT: a key that signed firmware is evidence; deleting it is refused.
    signing_key = models.ForeignKey(SigningKey, models.PROTECT, null=True, blank=True, related_name="firmware")
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    validated_at = models.DateTimeField(null=True, blank=True)
    # Read from meta.conf at validation (docs/firmware.md, "Delta updates"): the
    # resources every upgrade task can patch from the device's own bytes, and the
    # oldest fwup that applies such a patch ("" when the file has none).
    delta_resources = models.JSONField(default=list, blank=True)
    delta_fwup_version = models.CharField(max_length=20, blank=True)
    # meta.conf's require-fwup-version: the oldest fwup that applies this file
    # ("" when it names none, or the file was validated before it was kept).
    require_fwup_version = models.CharField(max_length=20, blank=True)

    objects: ClassVar[FirmwareQuerySet] = FirmwareQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "firmware"
        constraints = [
            # The uuid is what devices report; two files with one uuid in a product
            # would make update success ambiguous.
            models.UniqueConstraint(
                fields=["product", "uuid"], condition=models.Q(uuid__isnull=False), name="firmware_product_uuid_uniq"
            ),
        ]
        indexes = [models.Index(fields=["product", "status", "-created_at"], name="firmware_product_status_idx")]

    def __str__(self) -> str:
        if self.version:
            label = "archive " if self.kind == FirmwareKind.ARCHIVE else ""
            return f"{self.product.name} {label}{self.version} ({(self.uuid or '')[:8]})"
        return f"{self.original_filename or 'upload'} ({self.status})"


class DeltaStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    NOT_WORTH_IT = "not_worth_it", "Not worth it"


class DeltaFirmware(models.Model):
    """The delta file from one firmware to another of the same product
    (docs/firmware.md, "Delta updates"). The row is the work item: generation
    claims it by compare-and-set, and the sweep finds it again when its task
    was lost. Deleted with either firmware, its stored file on commit."""

    source = models.ForeignKey(Firmware, models.CASCADE, related_name="deltas_from")
    target = models.ForeignKey(Firmware, models.CASCADE, related_name="deltas_to")
    status = models.CharField(max_length=20, choices=DeltaStatus.choices, default=DeltaStatus.PENDING)
    reason = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Set while a task builds it; a claim older than the task's time limit is lost.
    claimed_at = models.DateTimeField(null=True, blank=True)
    size = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    partial_sha256 = models.JSONField(default=list, blank=True, help_text="SHA-256 of each 1 MiB part.")
    storage_name = models.CharField(max_length=300, blank=True)
    patched_resources = models.JSONField(default=list, blank=True)
    fwup_version = models.CharField(max_length=20, blank=True, help_text="The oldest fwup that applies it.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "delta firmware"
        constraints = [models.UniqueConstraint(fields=["source", "target"], name="deltafirmware_pair_uniq")]
        indexes = [models.Index(fields=["status", "created_at"], name="deltafirmware_status_idx")]

    def __str__(self) -> str:
        return f"delta {self.source_id} → {self.target_id} ({self.status})"

    @property
    def saving(self) -> int:
        """Bytes a device does not download, against the full target."""
        return max(self.target.size - self.size, 0) if self.status == DeltaStatus.READY else 0
