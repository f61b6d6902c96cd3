"""Devices and the shared-secret credentials they connect with."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from devices.fields import TagsField
from nerveshub.tenancy.models import Organization, Product


def validate_tags(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value):
        raise ValidationError("Tags must be a list of non-empty strings.")
    for tag in value:
        if any(c.isspace() for c in tag):
            raise ValidationError(f"Tag {tag!r} contains white space.")


IDENTIFIER_MAX_LENGTH = 200


def validate_identifier(value: object) -> None:
    """The one rule for device identifiers (serial numbers), wherever they come
    from: the API, the admin, a device registering itself with a product key.
    Printable and without white space: no control characters (NUL among them,
    which PostgreSQL cannot store), no right-to-left overrides, zero-width or
    other format characters that make one serial display as another, no
    unassigned code points; 1 to 200 characters (the column's size)."""
    if not isinstance(value, str) or not value:
        raise ValidationError("The identifier must be a non-empty string.")
    if len(value) > IDENTIFIER_MAX_LENGTH:
        raise ValidationError(f"The identifier is longer than {IDENTIFIER_MAX_LENGTH} characters.")
    # isprintable() is false for the categories Cc, Cf, Cs, Co, Cn, Zl, Zp and
    # Zs (space excepted, which isspace() catches).
    if not value.isprintable():
        raise ValidationError("The identifier contains a control, formatting or unassigned character.")
    if any(c.isspace() for c in value):
        raise ValidationError("The identifier contains white space.")


class ConnectionStatus(models.TextChoices):
    NOT_SEEN = "not_seen", "Never connected"
    CONNECTED = "connected", "Connected"
    DISCONNECTED = "disconnected", "Disconnected"
    # Never stored: what `Device.presence` shows for a device without a live
    # socket that polls (docs/polling.md) and was heard from within twice its
    # product's poll interval.
    POLLING = "polling", "Polling"


class ValidationStatus(models.TextChoices):
    VALIDATED = "validated", "Validated"
    NOT_VALIDATED = "not_validated", "Not validated"
    UNKNOWN = "unknown", "Unknown"


class HubLease(models.Model):
    """A hub server process's claim that the device sockets it records are
    alive. The process renews it every HUB_LEASE_RENEW_SECONDS (one UPDATE);
    a process that dies (kill -9, OOM, a lost machine) stops renewing, and its
    devices stop counting as online when `expires_at` passes, before anything
    has written their rows. The first live process to see the lease expired
    closes it out (`closed_at`, compare-and-set) and records its devices'
    disconnects (devices.services.close_out_expired_leases)."""

    # The process's dispatcher channel: its sockets' addresses start with it.
    channel = models.CharField(max_length=200, blank=True)
    host = models.CharField(max_length=200, blank=True)
    pid = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    renewed_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # Each live process looks for expired leases not closed out yet.
            models.Index(fields=["expires_at"], name="hublease_open_expiry_idx", condition=Q(closed_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid} ({self.channel})"


def online_q(now: datetime | None = None, prefix: str = "") -> Q:
    """Devices that count as online: marked connected, by a hub process whose
    lease is live. A row marked connected without a lease was not written by a
    hub process (fixtures, imports) and is taken at its word. `prefix` is the
    path to the device from another model ("device__")."""
    moment = now or timezone.now()
    return Q(**{prefix + "connection_status": ConnectionStatus.CONNECTED}) & (
        Q(**{prefix + "hub_lease__isnull": True}) | Q(**{prefix + "hub_lease__expires_at__gt": moment})
    )


class DeviceQuerySet(models.QuerySet["Device"]):
    def alive(self) -> DeviceQuerySet:
        return self.filter(deleted_at__isnull=True)

    def for_org(self, org: Organization | int) -> DeviceQuerySet:
        return self.filter(org=org)

    def online(self, now: datetime | None = None) -> DeviceQuerySet:
        return self.filter(online_q(now))

    def offline(self, now: datetime | None = None) -> DeviceQuerySet:
        return self.exclude(online_q(now))


class Device(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="devices")
    product = models.ForeignKey(Product, models.PROTECT, related_name="devices")
    identifier = models.CharField(
        max_length=IDENTIFIER_MAX_LENGTH,
        validators=[validate_identifier],
        help_text="Serial number; unique in the organization.",
    )
    description = models.TextField(blank=True)
    tags = TagsField(default=list, blank=True, validators=[validate_tags])

    # What the device reported at its last join (nerves_fw_* keys, active slot).
    firmware_uuid = models.CharField(max_length=36, blank=True)
    firmware_product = models.CharField(max_length=200, blank=True)
    firmware_version = models.CharField(max_length=100, blank=True)
    firmware_platform = models.CharField(max_length=100, blank=True)
    firmware_architecture = models.CharField(max_length=100, blank=True)
    firmware_author = models.CharField(max_length=200, blank=True)
    firmware_description = models.TextField(blank=True)
    firmware_vcs_identifier = models.CharField(max_length=200, blank=True)
    firmware_misc = models.TextField(blank=True)
    fwup_version = models.CharField(max_length=50, blank=True)
    device_api_version = models.CharField(max_length=50, blank=True)
    console_version = models.CharField(max_length=50, blank=True)
    firmware_validation = models.CharField(
        max_length=20, choices=ValidationStatus.choices, default=ValidationStatus.UNKNOWN
    )
    firmware_auto_revert_detected = models.BooleanField(default=False)

    # Connection state. Written on connect and disconnect, and while connected at
    # most once per DEVICE_LAST_SEEN_INTERVAL: an idle socket costs no writes.
    connection_status = models.CharField(
        max_length=20, choices=ConnectionStatus.choices, default=ConnectionStatus.NOT_SEEN
    )
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField(null=True, blank=True)
    network_interface = models.CharField(max_length=50, blank=True)
    connection_types = models.JSONField(default=list, blank=True)
    # Channel-layer address of the socket serving this device, so a command reaches
    # it on whichever server process holds it.
    socket_channel = models.CharField(max_length=200, blank=True)
    # The lease of the hub process holding that socket, set while connected:
    # presence is believed only while the lease is live (online_q).
    hub_lease = models.ForeignKey(HubLease, models.PROTECT, null=True, blank=True, related_name="devices")
    console_available = models.BooleanField(default=False)
    # Polling devices (docs/polling.md): when the device last asked for an
    # update over HTTPS (written at most once per half poll interval), and
    # until when that makes it count as present.
    last_polled_at = models.DateTimeField(null=True, blank=True)
    polling_until = models.DateTimeField(null=True, blank=True)

    # Extension reports (docs/device-protocol.md §8.2).
    health = models.JSONField(null=True, blank=True)
    health_reported_at = models.DateTimeField(null=True, blank=True)
    location = models.JSONField(null=True, blank=True)
    location_updated_at = models.DateTimeField(null=True, blank=True)

    updates_enabled = models.BooleanField(default=True)
    # Elixir run on every join after the deployment's own (`scripts/run`, ref
    # "connecting_code"; device_api >= 2.1.0).
    connecting_code = models.TextField(blank=True)
    penalty_box_until = models.DateTimeField(null=True, blank=True)
    deployment = models.ForeignKey(
        "deployments.Deployment", models.SET_NULL, null=True, blank=True, related_name="devices"
    )

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[DeviceQuerySet] = DeviceQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ["identifier"]
        constraints = [
            # Soft-deleted devices keep their identifier: a serial never silently
            # becomes a different device.
            models.UniqueConstraint(fields=["org", "identifier"], name="device_org_identifier_uniq"),
        ]
        indexes = [
            # Deployment matching and the product device list.
            models.Index(fields=["product", "connection_status"], name="device_product_conn_idx"),
            models.Index(fields=["deployment", "connection_status"], name="device_deployment_conn_idx"),
            models.Index(fields=["firmware_uuid"], name="device_fw_uuid_idx"),
            # Stale-connection sweep.
            models.Index(fields=["connection_status", "last_seen_at"], name="device_conn_seen_idx"),
            # tags__has_tag on PostgreSQL is served by the GIN index "device_tags_gin",
            # created by a PostgreSQL-only migration (SQLite has no GIN).
        ]

    def __str__(self) -> str:
        return self.identifier

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def online(self) -> bool:
        """online_q for one row (select_related("hub_lease") in lists)."""
        if self.connection_status != ConnectionStatus.CONNECTED:
            return False
        return self.hub_lease_id is None or self.hub_lease.expires_at > timezone.now()  # type: ignore[union-attr]

    @property
    def presence(self) -> str:
        """connection_status as the pages and the API show it: a device whose
        hub process lost its lease is disconnected, whatever its row says, and
        one without a live socket that polls on time is polling."""
        if self.connection_status == ConnectionStatus.CONNECTED and self.online:
            return ConnectionStatus.CONNECTED
        if self.is_polling():
            return ConnectionStatus.POLLING
        if self.connection_status == ConnectionStatus.CONNECTED:
            return ConnectionStatus.DISCONNECTED
        return self.connection_status

    def is_polling(self, now: datetime | None = None) -> bool:
        """Whether the device polls (docs/polling.md) and was heard from
        within twice its product's poll interval."""
        return self.polling_until is not None and self.polling_until > (now or timezone.now())

    def get_presence_display(self) -> str:
        return str(ConnectionStatus(self.presence).label)

    def in_penalty_box(self, now: object = None) -> bool:
        moment = now or timezone.now()
        return self.penalty_box_until is not None and self.penalty_box_until > moment  # type: ignore[operator]


class SharedSecretBase(models.Model):
    key = models.CharField(max_length=60, unique=True)
    # Fernet-sealed (nerveshub.lib.sealed); the clear secret is shown once.
    secret_sealed = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def is_active(self) -> bool:
        return self.deactivated_at is None


class ProductSharedSecret(SharedSecretBase):
    """A product key (`nhp_…`): any device that signs with it is registered in the
    product under the identifier it signed."""

    product = models.ForeignKey(Product, models.CASCADE, related_name="shared_secrets")

    class Meta:
        verbose_name = "product shared secret"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.key


class DeviceSharedSecret(SharedSecretBase):
    """A device key (`nhd_…`): only the one device may sign with it."""

    device = models.ForeignKey(Device, models.CASCADE, related_name="shared_secrets")

    class Meta:
        verbose_name = "device shared secret"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.key


class SupportScript(models.Model):
    """A saved Elixir snippet of a product that a manager runs on its devices
    (`scripts/run`, device_api >= 2.1.0)."""

    org = models.ForeignKey(Organization, models.CASCADE, related_name="support_scripts")
    product = models.ForeignKey(Product, models.CASCADE, related_name="support_scripts")
    name = models.CharField(max_length=100)
    text = models.TextField(
        help_text="Elixir code, evaluated on the device; the value of the last expression is shown."
    )
    timeout_ms = models.PositiveIntegerField(default=10_000, help_text="How long the device lets it run.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product__name", "name"]
        constraints = [models.UniqueConstraint(fields=["product", "name"], name="supportscript_product_name_uniq")]

    def __str__(self) -> str:
        return self.name


class ScriptRunStatus(models.TextChoices):
    PENDING = "pending", "Waiting for the device"
    COMPLETED = "completed", "Completed"
    ERROR = "error", "Error"


class ScriptRun(models.Model):
    """One run of a script on one device, with what the device answered. The
    text is copied: editing the script later does not rewrite history."""

    org = models.ForeignKey(Organization, models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, models.CASCADE, related_name="script_runs")
    script = models.ForeignKey(SupportScript, models.SET_NULL, null=True, blank=True, related_name="runs")
    # What the device echoes back to match its answer: 4 random bytes, base64.
    ref = models.CharField(max_length=20)
    text = models.TextField()
    timeout_ms = models.PositiveIntegerField(default=10_000)
    status = models.CharField(max_length=10, choices=ScriptRunStatus.choices, default=ScriptRunStatus.PENDING)
    output = models.TextField(blank=True)
    return_value = models.TextField(blank=True)
    reason = models.TextField(blank=True)
    requested_by = models.ForeignKey("auth.User", models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["device", "ref"], name="scriptrun_device_ref_uniq")]

    def __str__(self) -> str:
        return f"{self.script or 'script'} on {self.device_id} ({self.status})"


class HealthReport(models.Model):
    """One health report of a device, kept for charts and alarms: the numeric
    metrics and the alarm names only (the whole latest report is on the
    device). Bounded per device and by age (HEALTH_HISTORY_PER_DEVICE,
    HEALTH_HISTORY_DAYS; devices.health.prune_health_history)."""

    device = models.ForeignKey(Device, models.CASCADE, related_name="health_reports")
    reported_at = models.DateTimeField(default=timezone.now)
    metrics = models.JSONField(default=dict, blank=True)
    alarms = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-reported_at"]
        indexes = [models.Index(fields=["device", "-reported_at"], name="health_device_time_idx")]

    def __str__(self) -> str:
        return f"{self.device_id} @ {self.reported_at:%Y-%m-%d %H:%M:%S}"
