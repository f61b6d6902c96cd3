"""X.509 certificates: the Device CAs an organization registers and the device
certificates the hub has seen."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from devices.fields import TagsField
from devices.models import Device, validate_tags
from nerveshub.tenancy.models import Organization, Product


class CACertificate(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="ca_certificates")
    description = models.CharField(max_length=200, blank=True)
    subject = models.CharField(max_length=500, blank=True)
    # Hex SHA-256 of the subject's DER: certificates name their issuer by it.
    subject_hash = models.CharField(max_length=64, db_index=True)
    serial = models.CharField(max_length=100, help_text="Decimal serial number.")
    # Hex SubjectKeyIdentifier: devices' certificates name their CA by it (AKI).
    # Whoever makes a certificate writes its SKI, so it is a hint for lookups and
    # the API's name for the row, never proof of anything: unique per org only.
    ski = models.CharField(max_length=128, db_index=True)
    aki = models.CharField(max_length=128, blank=True)
    # Hex SHA-256 of the DER SubjectPublicKeyInfo: what a verified CA owns hub-wide.
    public_key_fingerprint = models.CharField(max_length=64)
    # Set when the org proved it holds the CA's private key (a verification
    # certificate signed by the CA carrying the org's code). Until then the CA
    # provisions and authenticates nothing (docs/certificates.md).
    verified_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    check_expiration = models.BooleanField(
        default=True, help_text="Refuse devices once this CA has expired. Off: devices it signed may still connect."
    )
    der = models.BinaryField()
    # Just-in-time provisioning: an unknown device whose certificate this CA signed
    # is created in this product with these tags.
    jitp_product = models.ForeignKey(Product, models.SET_NULL, null=True, blank=True, related_name="+")
    jitp_tags = TagsField(default=list, blank=True, validators=[validate_tags])
    jitp_description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["org__name", "-created_at"]
        verbose_name = "CA certificate"
        constraints = [
            models.UniqueConstraint(fields=["org", "ski"], name="cacert_org_ski_uniq"),
            # One owner per CA key, and only proven owners count: an unverified
            # row (anybody can paste a public certificate) never blocks the org
            # that proves possession.
            models.UniqueConstraint(
                fields=["public_key_fingerprint"],
                condition=models.Q(verified_at__isnull=False),
                name="cacert_verified_key_uniq",
            ),
        ]

    def __str__(self) -> str:
        return self.description or self.subject or self.ski

    @property
    def is_verified(self) -> bool:
        return self.verified_at is not None


class DeviceCertificate(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="device_certificates")
    device = models.ForeignKey(Device, models.CASCADE, related_name="certificates")
    serial = models.CharField(max_length=100)
    subject = models.CharField(max_length=500, blank=True)
    ski = models.CharField(max_length=128, blank=True)
    aki = models.CharField(max_length=128, blank=True)
    # Hex SHA-256 of the DER: the first thing matched when a device connects.
    fingerprint = models.CharField(max_length=64, unique=True)
    public_key_fingerprint = models.CharField(max_length=64, db_index=True)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    der = models.BinaryField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["device", "serial"], name="devicecert_device_serial_uniq")]

    def __str__(self) -> str:
        return f"{self.device} #{self.serial}"
