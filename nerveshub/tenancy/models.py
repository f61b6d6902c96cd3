"""Who owns what: organizations, their members and products, API tokens, and the
audit log every change writes to."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


class Role(models.TextChoices):
    # Ordered from most to least power; Membership.has_role compares by rank.
    ADMIN = "admin", "Admin"
    MANAGE = "manage", "Manage"
    VIEW = "view", "View"


ROLE_RANK = {Role.VIEW: 1, Role.MANAGE: 2, Role.ADMIN: 3}


class Organization(models.Model):
    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MembershipQuerySet(models.QuerySet["Membership"]):
    def at_least(self, role: str) -> MembershipQuerySet:
        allowed = [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[Role(role)]]
        return self.filter(role__in=allowed)


class Membership(models.Model):
    org = models.ForeignKey(Organization, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEW)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects: ClassVar[MembershipQuerySet] = MembershipQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org", "user"], name="membership_org_user_uniq")]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role(role)]


class Product(models.Model):
    # Extensions a device of this product may attach (docs/device-protocol.md §8). Health
    # is on by default; geo is off because it makes devices call a third-party
    # GeoIP service.
    KNOWN_EXTENSIONS = ("health", "geo", "network_identity", "local_shell")

    org = models.ForeignKey(Organization, models.CASCADE, related_name="products")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    extensions = models.JSONField(default=list, blank=True, help_text="Enabled extension names.")
    # How often the product's polling devices (docs/polling.md) are expected to
    # ask for an update: a device that polled within twice this counts as
    # present ("polling") on the pages and in the API.
    poll_interval_seconds = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(10), MaxValueValidator(30 * 86400)],
        help_text="How often polling devices of this product ask for an update, in seconds.",
    )
    # {metric: [warning, unhealthy]}: the product's own limits for the health
    # status, each replacing HEALTH_THRESHOLDS' entry for that metric
    # (devices.health.thresholds_for; the rule is devices.health.threshold_errors).
    health_thresholds = models.JSONField(default=dict, blank=True)
    # Signing keys compiled into the product's firmware images: its devices
    # trust them without being sent them (trust preflight, docs/rollout.md).
    builtin_keys = models.ManyToManyField(
        "firmware.SigningKey",
        blank=True,
        related_name="builtin_in_products",
        help_text="Signing keys every device of this product has built in.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["org__name", "name"]
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="product_org_name_uniq")]

    def __str__(self) -> str:
        # Just the name: printing a product must not cost a query for its org.
        return self.name


class APIToken(models.Model):
    """A user's token for the REST API and the CLI. Only a SHA-256 of the secret
    part is stored; the token is shown once when created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    note = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to recognise the token.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditEvent(models.Model):
    """One row per action anybody (user, device, system) took. Written in the same
    transaction as the change it describes, by nerveshub.tenancy.services.audit."""

    org = models.ForeignKey(Organization, models.CASCADE, null=True, blank=True, related_name="audit_events")
    actor_user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    # Kept as text so the row still says who acted after the user or device is gone.
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=100)
    subject_type = models.CharField(max_length=50, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    subject = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # The org's events form a hash chain (nerveshub.tenancy.audit_chain): `hash`
    # is SHA-256 over this row's canonical fields and `prev_hash`, the hash of
    # the org's previous event. Changing, inserting or deleting a row breaks it.
    prev_hash = models.CharField(max_length=64, blank=True, editable=False)
    hash = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The org audit page and retention sweep scan one org by time.
            models.Index(fields=["org", "-created_at"], name="audit_org_time_idx"),
            # Device and deployment pages list the events of one subject.
            models.Index(fields=["subject_type", "subject_id", "-created_at"], name="audit_subject_time_idx"),
        ]

    def __str__(self) -> str:
        # Not the subject's text, which may be a credential (nerveshub.tenancy.redaction):
        # the admin puts this in the title of a page any member may read.
        subject = f" {self.subject_type} #{self.subject_id}" if self.subject_type else ""
        return f"{self.actor} {self.action}{subject}"


class AuditChainHead(models.Model):
    """Where each org's audit chain ends, and where it starts after pruning.

    Appending to a chain first updates this row, so appends to one chain are
    serialised by its row lock (PostgreSQL) or the write lock (SQLite) until
    the transaction that audits commits. `key` is the org id, 0 for events
    that belong to no org; it is not a foreign key so that the row can be
    created before the org exists in the same transaction."""

    key = models.BigIntegerField(primary_key=True)
    appended = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)
    last_event_id = models.BigIntegerField(null=True, blank=True)
    # After a prune: the hash of the last deleted event, which the first
    # remaining event's prev_hash must equal.
    checkpoint_hash = models.CharField(max_length=64, blank=True)
    checkpoint_event_id = models.BigIntegerField(null=True, blank=True)
    checkpoint_at = models.DateTimeField(null=True, blank=True)
    pruned = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"audit chain {self.key}"
